"""Ratios of job times with their spread: how two sets of jobs compare, and how sure that is."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Any


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """Return the first quartile, the median and the third quartile (linear interpolation, as numpy's)."""
    ordered = sorted(values)

    def at(q: float) -> float:
        position = (len(ordered) - 1) * q
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return at(0.25), at(0.5), at(0.75)


def describe(values: Sequence[float]) -> dict[str, Any]:
    """Return count, median, quartiles, the IQR relative to the median, min and max of `values` (seconds)."""
    if not values:
        return {"n": 0, "median": None, "q1": None, "q3": None, "iqr_ratio": None, "min": None, "max": None}
    q1, median, q3 = quartiles(values)
    return {
        "n": len(values),
        "median": round(median, 4),
        "q1": round(q1, 4),
        "q3": round(q3, 4),
        "iqr_ratio": round((q3 - q1) / median, 4) if median else None,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def ratio_of_medians(
    numerator: Sequence[float], denominator: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Return median(numerator) / median(denominator) and its 95% bootstrap interval (each set resampled alone).

    None values throughout when either set is empty; with one value a side the interval is the point itself.
    """
    if not numerator or not denominator:
        return {"ratio": None, "ci95": None, "resamples": 0}
    ratio = statistics.median(numerator) / statistics.median(denominator)
    rng = random.Random(seed)
    draws = sorted(
        statistics.median(rng.choices(numerator, k=len(numerator)))
        / statistics.median(rng.choices(denominator, k=len(denominator)))
        for _ in range(resamples)
    )
    low, high = draws[int(0.025 * resamples)], draws[min(int(0.975 * resamples), resamples - 1)]
    return {"ratio": round(ratio, 5), "ci95": [round(low, 5), round(high, 5)], "resamples": resamples}


def paired_ratio(pairs: Sequence[tuple[float, float]], *, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Return the geometric mean of a/b over (a, b) pairs and its 95% bootstrap interval (pairs resampled whole).

    Each pair is two jobs run side by side (one in each condition), so a drift of the machine that moves both
    cancels in their ratio; the geometric mean keeps a 2% faster and a 2% slower pair from reading as a change.
    """
    logs = [math.log(a / b) for a, b in pairs if a > 0 and b > 0]
    if not logs:
        return {"ratio": None, "ci95": None, "pairs": 0, "resamples": 0}
    rng = random.Random(seed)
    draws = sorted(statistics.fmean(rng.choices(logs, k=len(logs))) for _ in range(resamples))
    low, high = draws[int(0.025 * resamples)], draws[min(int(0.975 * resamples), resamples - 1)]
    return {
        "ratio": round(math.exp(statistics.fmean(logs)), 5),
        "ci95": [round(math.exp(low), 5), round(math.exp(high), 5)],
        "pairs": len(logs),
        "resamples": resamples,
    }


def abba(pairs: int) -> list[bool]:
    """Return, job by job, whether each job of `pairs` pairs runs paused: running first in even pairs, paused
    first in odd ones (ABBA), so that a slow drift of the machine weighs on both sides alike."""
    return [paused for pair in range(pairs) for paused in ((False, True) if pair % 2 == 0 else (True, False))]


def paired_difference(pairs: Sequence[tuple[float, float]], *, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Return the mean of a - b over (a, b) pairs and its 95% bootstrap interval (pairs resampled whole).

    Beside `paired_ratio`: differences of the parts of a job add up to the whole job's, where ratios do not.
    """
    differences = [a - b for a, b in pairs]
    if not differences:
        return {"difference": None, "ci95": None, "pairs": 0, "resamples": 0}
    rng = random.Random(seed)
    draws = sorted(statistics.fmean(rng.choices(differences, k=len(differences))) for _ in range(resamples))
    low, high = draws[int(0.025 * resamples)], draws[min(int(0.975 * resamples), resamples - 1)]
    return {
        "difference": round(statistics.fmean(differences), 5),
        "ci95": [round(low, 5), round(high, 5)],
        "pairs": len(differences),
        "resamples": resamples,
    }


def ratio_between(
    pairs: Sequence[tuple[float, float]],
    baseline_pairs: Sequence[tuple[float, float]],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Return one set of pairs' paired ratio over another's, and its 95% bootstrap interval (each set resampled alone).

    Each set compares a condition with the same reference (e.g. the monitor with a part switched on against the
    monitor paused), so their quotient is what the one condition costs beyond the other.
    """
    logs = [math.log(a / b) for a, b in pairs if a > 0 and b > 0]
    base = [math.log(a / b) for a, b in baseline_pairs if a > 0 and b > 0]
    if not logs or not base:
        return {"ratio": None, "ci95": None, "pairs": [len(logs), len(base)], "resamples": 0}
    rng = random.Random(seed)
    draws = sorted(
        statistics.fmean(rng.choices(logs, k=len(logs))) - statistics.fmean(rng.choices(base, k=len(base)))
        for _ in range(resamples)
    )
    low, high = draws[int(0.025 * resamples)], draws[min(int(0.975 * resamples), resamples - 1)]
    return {
        "ratio": round(math.exp(statistics.fmean(logs) - statistics.fmean(base)), 5),
        "ci95": [round(math.exp(low), 5), round(math.exp(high), 5)],
        "pairs": [len(logs), len(base)],
        "resamples": resamples,
    }


def difference_of_medians(
    minuend: Sequence[float], subtrahend: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Return median(minuend) - median(subtrahend) and its 95% bootstrap interval (each set resampled alone).

    None values throughout when either set is empty.
    """
    if not minuend or not subtrahend:
        return {"difference": None, "ci95": None, "resamples": 0}
    difference = statistics.median(minuend) - statistics.median(subtrahend)
    rng = random.Random(seed)
    draws = sorted(
        statistics.median(rng.choices(minuend, k=len(minuend)))
        - statistics.median(rng.choices(subtrahend, k=len(subtrahend)))
        for _ in range(resamples)
    )
    low, high = draws[int(0.025 * resamples)], draws[min(int(0.975 * resamples), resamples - 1)]
    return {"difference": round(difference, 5), "ci95": [round(low, 5), round(high, 5)], "resamples": resamples}
