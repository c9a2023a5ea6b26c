"""The laws a job's peak memory and time follow as its size grows, fitted to measured jobs with a prior.

What the pipeline does with a job of resolution r, F frames and guidance: per denoising step the UNet runs on
a batch of c = 2 (classifier-free guidance) or 1 (guidance_scale <= 1) over F frames of latents of (r/8)^2
positions. With P = r^2 / 1e6 (megapixels per frame):

- its convolutions and MLPs cost in proportion to pixels x frames, c·P·F ("megapixel-frames");
- its spatial self-attention runs per frame over all of that frame's positions: its work grows with
  c·P^2·F, i.e. (pixels x frames)^2 / frames. On an H200 the step time per megapixel-frame rises with the
  resolution (0.045 s at 512p, 0.050 s at 1024p once a fixed 0.05 s per step is taken off), which a law
  linear in pixels x frames misses by up to 10% on sizes it has not seen, and this term catches. The temporal
  attention (each position over at most 32 frames) is small beside it and adds nothing the data can tell.

So, with c counted as 1 or 0.5 (the share of the guided batch):
- peak memory = weights + a·c·P·F + b·c·P^2·F (activations; the attention term stays near 0 where the attention
  kernels do not keep the score matrix, as PyTorch's SDPA does not, and grows where they do);
- time per denoising step = t0 + t1·c·P·F + t2·c·P^2·F;
- time outside the denoising loop (encoders, VAE decode, export) = f0 + f1·P·F + f2·P^2·F;
- generation time = outside + steps x per step, for a size the generator's process has run before;
- the one-off warm-up of the first denoising step at a size new to the process (cuDNN picking its kernels and the
  allocator growing its pool for new shapes) = w0 + w1·c·P·F: a fixed part and a part that grows with the
  activations. A job that is the first of its size pays generation time + warm-up.

Fitting: least squares on relative errors (sizes span 60x, and a 1% miss matters as much on a small job as on
a big one) with a Gaussian prior on each coefficient, i.e. ridge regression towards a prior law. The prior is
the same pipeline measured on an H100: 4.6 GB of weights and 0.62 GB per megapixel-frame (512p/16: 7.2 GB, 1024p/32:
25.3 GB), 0.0148 s + 0.0553 s per megapixel-frame per step, 0.57 s + 0.054 s per megapixel-frame outside. The
warm-up's prior is the H200's (the only card it was measured on): 0.4 s at the smallest sizes to 0.8 s at 1024p/32.
Each term may differ from it by `prior_share` of the prior's whole value at the largest size (1024p/32), against
an assumed measurement spread `noise`: one job outweighs the prior many times over where it measures, and the
prior only decides what the jobs cannot tell apart (the slope when every job had one size). With no job at all
the answer is not this law but the design's table (memory) or the H100's law (time): what the generator uses too.

Outliers: with five jobs or more, a measurement more than 5 robust spreads (1.4826 x the median relative residual)
and more than 20% off the first fit is dropped and the law fitted again: a peak stored before the generator
reported each job's own (every job after a 1024p/32 one reported its 28 GB) or a job slowed by a neighbour must
not bend the law for everyone else. How many were dropped is reported.

The margin is the predictive spread: the relative residual spread s of the fit (blended with `noise` as one
more job, so a few lucky jobs do not claim 0%) times sqrt(1 + h), h = the leverage of the asked-for size
(phi' A^-1 phi / value^2, A the fit's precision matrix): wide far from every measured size, narrow near them.

Everything is aggregated per size first (every job of one size has the same features), so a fit over 5,000
jobs costs a pass over them and a few 3x3 solves, and leaving a size out (held-out error) is a subtraction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.sizing import table_peak_bytes

Z = 2.0  # about 98% one-sided under a normal spread
MIN_MARGIN_RATIO = 0.03
MAX_MARGIN_RATIO = 1.0  # far from every measured size: at most double the value
PRIOR_JOBS = 1.0  # the assumed spread counts as this many jobs in the residual spread
MIN_JOBS_FOR_OUTLIERS = 5  # below this, no measurement is called an outlier
OUTLIER_SPREADS = 5.0
OUTLIER_RATIO = 0.2  # a measurement within 20% of the law is never dropped
Size = tuple[int, int]  # (resolution, frames): what "a size not seen" means
Vector = tuple[float, ...]


@dataclass(frozen=True)
class JobShape:
    """The parameters that drive memory and time."""

    resolution: int
    num_frames: int
    steps: int
    guidance_scale: float = 9.0

    @property
    def megapixels(self) -> float:
        """Return one frame's megapixels, resolution^2 / 1e6."""
        return self.resolution**2 / 1e6

    @property
    def batch_share(self) -> float:
        """Return the UNet's batch as a share of the guided one: 1 with guidance, 0.5 without."""
        return 1.0 if self.guidance_scale > 1 else 0.5

    @property
    def x(self) -> float:
        """Return megapixel-frames through the UNet: resolution^2 * frames / 1e6, halved without guidance."""
        return self.megapixels * self.num_frames * self.batch_share

    @property
    def size(self) -> Size:
        """Return (resolution, frames)."""
        return (self.resolution, self.num_frames)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON view."""
        return {
            "resolution": self.resolution,
            "num_frames": self.num_frames,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
        }


def unet_features(shape: JobShape) -> Vector:
    """Return 1, c·P·F, c·P^2·F: the UNet's fixed part, its per-pixel work and its spatial attention."""
    p, f, c = shape.megapixels, shape.num_frames, shape.batch_share
    return (1.0, c * p * f, c * p * p * f)


def outside_features(shape: JobShape) -> Vector:
    """Return 1, P·F, P^2·F: the encoders, and the VAE decode and export, which guidance does not double."""
    p, f = shape.megapixels, shape.num_frames
    return (1.0, p * f, p * p * f)


def warmup_features(shape: JobShape) -> Vector:
    """Return 1, c·P·F: the warm-up's fixed part (kernel choice) and its part growing with the activations."""
    p, f, c = shape.megapixels, shape.num_frames, shape.batch_share
    return (1.0, c * p * f)


REFERENCE = JobShape(1024, 32, 50)  # the largest job: the prior's shares and the normalisation refer to it


@dataclass(frozen=True)
class LawForm:
    """One quantity's law: its features, the prior law and how far it may be off, and the no-job answer."""

    name: str
    terms: tuple[str, ...]
    features: Callable[[JobShape], Vector]
    prior: Vector  # the prior law's coefficients
    prior_share: Vector  # how far each term may be off: a share of the prior's value at REFERENCE
    noise: float  # the assumed relative spread of one measurement
    unmeasured_spread: float  # the assumed relative spread of the answer before any job was measured
    table: Callable[[JobShape], float] | None = None  # that answer, when not the prior law itself

    def prior_value(self, shape: JobShape) -> float:
        """Return the prior law's value."""
        return sum(c * f for c, f in zip(self.prior, self.features(shape), strict=True))

    def unmeasured(self, shape: JobShape) -> float:
        """Return the answer before any job was measured: the table where there is one, else the prior law."""
        return self.table(shape) if self.table is not None else self.prior_value(shape)


MEMORY = LawForm(
    name="peak memory",
    terms=("weights_bytes", "per_megapixel_frame_bytes", "attention_bytes"),
    features=unet_features,
    prior=(4.6e9, 0.62e9, 0.0),
    prior_share=(0.3, 0.3, 0.1),
    noise=0.02,
    unmeasured_spread=0.15,  # the table is a guess per card (on the H100 and H200 it is 50% high at 512p)
    table=lambda shape: float(table_peak_bytes(shape.resolution, shape.num_frames)),
)
STEP = LawForm(
    name="time per step",
    terms=("fixed_s", "per_megapixel_frame_s", "attention_s"),
    features=unet_features,
    prior=(0.0148, 0.0553, 0.0),
    prior_share=(0.5, 0.5, 0.3),
    noise=0.05,
    unmeasured_spread=0.5,  # cards differ in speed several-fold
)
OUTSIDE = LawForm(
    name="time outside the denoising loop",
    terms=("fixed_s", "per_megapixel_frame_s", "attention_s"),
    features=outside_features,
    prior=(0.57, 0.054, 0.0),
    prior_share=(0.5, 0.5, 0.3),
    noise=0.1,  # encoders, decode and export vary more from run to run than a denoising step
    unmeasured_spread=0.5,
)
WARMUP = LawForm(
    name="first-at-size warm-up",
    terms=("fixed_s", "per_megapixel_frame_s"),
    features=warmup_features,
    prior=(0.4, 0.012),  # the H200: 0.4 s at 256p, about 0.8 s at 1024p/32 (33.6 megapixel-frames)
    prior_share=(0.5, 0.5),
    noise=0.25,  # one step's excess: a step's own noise and the kernels tried vary from one process to the next
    unmeasured_spread=0.5,
)


def invert(matrix: Sequence[Sequence[float]]) -> list[list[float]]:
    """Return the inverse of a small symmetric positive-definite matrix (Gauss-Jordan, partial pivoting)."""
    size = len(matrix)
    rows = [[*row, *(1.0 if i == j else 0.0 for j in range(size))] for i, row in enumerate(matrix)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(rows[r][col]))
        if abs(rows[pivot][col]) < 1e-300:
            raise ValueError("singular matrix")
        rows[col], rows[pivot] = rows[pivot], rows[col]
        scale = rows[col][col]
        rows[col] = [v / scale for v in rows[col]]
        for r in range(size):
            if r != col and rows[r][col] != 0.0:
                factor = rows[r][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    return [row[size:] for row in rows]


def _quadratic(phi: Vector, matrix: Sequence[Sequence[float]]) -> float:
    return sum(phi[i] * matrix[i][j] * phi[j] for i in range(len(phi)) for j in range(len(phi)))


GroupKey = tuple[int, int, bool]  # resolution, frames, guided: what a law's features depend on


def _key(shape: JobShape) -> GroupKey:
    return (shape.resolution, shape.num_frames, shape.guidance_scale > 1)


@dataclass
class Group:
    """The jobs of one size and guidance: their shared (normalised) features and their measured values."""

    key: GroupKey
    size: Size
    phi: Vector
    values: list[float] = field(default_factory=list)  # normalised by the prior's value at REFERENCE

    def sums(self) -> tuple[float, float]:
        """Return the sums of 1/y and 1/y^2: all a relative least-squares fit needs of these values."""
        return sum(1.0 / y for y in self.values), sum(1.0 / (y * y) for y in self.values)


@dataclass(frozen=True)
class Estimate:
    """One predicted quantity: the value, its margin, and how it was made."""

    value: float
    margin: float
    jobs: int
    source: str  # "prior" (no measured job) or "learned"
    prior_weight: float  # how much the prior still decides here: posterior over prior variance, 1 with no job


class Law:
    """One quantity's law fitted to measured (shape, value) pairs and its prior (see the module docstring)."""

    def __init__(self, form: LawForm, observations: Iterable[tuple[JobShape, float]] = ()) -> None:
        """Fit `form` to `observations`; values must be positive (the fit is on relative errors)."""
        self.form = form
        self._value_scale = form.prior_value(REFERENCE)
        self._feature_scale = form.features(REFERENCE)
        groups: dict[GroupKey, Group] = {}  # by what the features depend on: size and guidance
        self._dropped: set[tuple[GroupKey, float]] = set()
        for shape, value in observations:
            key = _key(shape)
            group = groups.get(key)
            if group is None:
                group = groups[key] = Group(key, shape.size, self._phi(shape))
            group.values.append(value / self._value_scale)
        self.groups = list(groups.values())
        # The prior as precisions on the normalised coefficients: a term may be off by prior_share of the
        # value at REFERENCE, where every normalised feature is 1, so the normalised coefficient's std is it.
        self._prior_theta = tuple(
            c * s / self._value_scale for c, s in zip(form.prior, self._feature_scale, strict=True)
        )
        self._prior_precision = tuple(form.noise**2 / share**2 for share in form.prior_share)
        self._fit()
        self.outliers = self._drop_outliers()
        if self.outliers:
            self._fit()
        self.spread = self._spread()

    def _fit(self) -> None:
        self.n = sum(len(g.values) for g in self.groups)
        self._contributions = [self._contribution(g) for g in self.groups]
        gram, moment = self._totals(range(len(self.groups)))
        self._inverse = invert(gram)
        self._theta = self._solve(self._inverse, moment)

    def _drop_outliers(self) -> int:
        """Drop measurements far off the law (a peak from before jobs reported their own, a job slowed by a
        neighbour): beyond OUTLIER_SPREADS robust spreads and OUTLIER_RATIO of the value. Return how many."""
        if self.n < MIN_JOBS_FOR_OUTLIERS:
            return 0
        fitted = [sum(t * f for t, f in zip(self._theta, g.phi, strict=True)) for g in self.groups]
        residuals = sorted(abs(1.0 - mu / y) for g, mu in zip(self.groups, fitted, strict=True) for y in g.values)
        robust_spread = 1.4826 * residuals[len(residuals) // 2]  # the median's, as a normal spread
        limit = max(OUTLIER_SPREADS * robust_spread, OUTLIER_RATIO)
        dropped = 0
        for group, mu in zip(self.groups, fitted, strict=True):
            kept = [y for y in group.values if abs(1.0 - mu / y) <= limit]
            self._dropped |= {(group.key, y) for y in group.values if abs(1.0 - mu / y) > limit}
            dropped += len(group.values) - len(kept)
            group.values = kept
        self.groups = [g for g in self.groups if g.values]
        return dropped

    def kept(self, shape: JobShape, value: float) -> bool:
        """Return whether a measurement the law was given counts (it was not dropped as an outlier)."""
        return not self._dropped or (_key(shape), value / self._value_scale) not in self._dropped

    def _phi(self, shape: JobShape) -> Vector:
        return tuple(f / s for f, s in zip(self.form.features(shape), self._feature_scale, strict=True))

    @staticmethod
    def _contribution(group: Group) -> tuple[list[list[float]], list[float]]:
        s1, s2 = group.sums()
        phi = group.phi
        return [[s2 * a * b for b in phi] for a in phi], [s1 * a for a in phi]

    def _totals(self, indices: Iterable[int]) -> tuple[list[list[float]], list[float]]:
        size = len(self._prior_theta)
        gram = [[self._prior_precision[i] if i == j else 0.0 for j in range(size)] for i in range(size)]
        moment = [p * t for p, t in zip(self._prior_precision, self._prior_theta, strict=True)]
        for index in indices:
            g_gram, g_moment = self._contributions[index]
            for i in range(size):
                moment[i] += g_moment[i]
                for j in range(size):
                    gram[i][j] += g_gram[i][j]
        return gram, moment

    @staticmethod
    def _solve(inverse: list[list[float]], moment: list[float]) -> Vector:
        return tuple(sum(row[j] * moment[j] for j in range(len(moment))) for row in inverse)

    def _spread(self) -> float:
        """Return the relative residual spread, with the assumed one counted as PRIOR_JOBS more jobs."""
        squared = 0.0
        for group in self.groups:
            fitted = sum(t * f for t, f in zip(self._theta, group.phi, strict=True))
            squared += sum((1.0 - fitted / y) ** 2 for y in group.values)
        # Coefficients the data pin down use up degrees of freedom; those the prior holds do not.
        effective = len(self._theta) - sum(self._inverse[k][k] * p for k, p in enumerate(self._prior_precision))
        dof = max(self.n - effective, 0.0)
        return math.sqrt((squared + PRIOR_JOBS * self.form.noise**2) / (dof + PRIOR_JOBS))

    def value(self, shape: JobShape, theta: Sequence[float] | None = None) -> float:
        """Return the fitted law's value (no margin; the prior law's when nothing was measured)."""
        raw = sum(t * f for t, f in zip(theta or self._theta, self._phi(shape), strict=True)) * self._value_scale
        return max(raw, 0.1 * self.form.unmeasured(shape))  # a wild extrapolation never goes near zero

    def estimate(self, shape: JobShape) -> Estimate:
        """Return the law's value and margin for one job."""
        if self.n == 0:
            value = self.form.unmeasured(shape)
            return Estimate(value, value * Z * self.form.unmeasured_spread, 0, "prior", 1.0)
        value = self.value(shape)
        phi = self._phi(shape)
        posterior = _quadratic(phi, self._inverse)
        leverage = posterior / (value / self._value_scale) ** 2
        ratio = min(max(Z * self.spread * math.sqrt(1.0 + leverage), MIN_MARGIN_RATIO), MAX_MARGIN_RATIO)
        prior = sum(f * f / p for f, p in zip(phi, self._prior_precision, strict=True))
        return Estimate(value, value * ratio, self.n, "learned", min(posterior / prior, 1.0))

    def without(self, size: Size) -> Vector:
        """Return the coefficients fitted without the jobs of one size (for held-out errors)."""
        kept = [i for i, g in enumerate(self.groups) if g.size != size]
        gram, moment = self._totals(kept)
        return self._solve(invert(gram), moment)

    def coefficients(self) -> dict[str, float]:
        """Return the fitted coefficients by term, in the quantity's units."""
        return {
            term: t * self._value_scale / s
            for term, t, s in zip(self.form.terms, self._theta, self._feature_scale, strict=True)
        }
