"""The store interface every backend implements, and the point record it stores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

FieldValue = float | int | str | bool | None


@dataclass(frozen=True)
class Point:
    """One measurement at one time: low-cardinality `tags` (host, gpu, stage...) and `fields` (values, job_id)."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ns: int


class StoreUnavailable(Exception):
    """The store cannot be reached or refused the request for a reason that may pass (retry later)."""


class Store(Protocol):
    """Write points and read them back by window; the backend-specific parts live in each implementation."""

    def write(self, points: Sequence[Point]) -> None:
        """Store the points; writing the same point twice stores it once. Raise StoreUnavailable to retry."""
        ...

    def ping(self) -> bool:
        """Return whether the store answers now."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
