"""One job's quality result and its one stored form, the `quality` point {host, gpu}, both ways.

Every field of the result is stored except the ones the point already says (`gpu`, a tag) or that follow
from the rest (`status`: unscorable when there is a reason, else scored; `pending`: a stored result is never
pending). So a result read back after a restart is the one that was served before it, and a rating can
recompute the combined score from the same parts (the CLIP part was judged against the baseline of its day).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from monitor.storage.base import FieldValue, Point
from monitor.storage.schema import QUALITY

MEASUREMENT = QUALITY
QUEUED, SCORING, SCORED, UNSCORABLE = "queued", "scoring", "scored", "unscorable"


@dataclass(frozen=True)
class QualityResult:
    """What is known about one job's quality; `status` is queued, scoring, scored or unscorable.

    `pending` is true while the clip waits to be scored; `schedule` says why it waits, or how it was scheduled
    (between jobs, or on the CPU after the longest wait); `scored_on` is the device CLIP ran on.
    """

    job_id: str
    gpu: str
    status: str
    video_path: str
    clip_score: float | None = None
    clip_score_min: float | None = None
    clip_cos: float | None = None
    clip_part: float | None = None
    clip_reason: str | None = None
    i2v_subject: float | None = None
    i2v_input_mean_cos: float | None = None
    i2v_reason: str | None = None
    smoothness: float | None = None
    jerk: float | None = None
    flicker_penalty: float | None = None
    temporal_flickering: float | None = None
    dynamic_degree: float | None = None
    static: bool | None = None
    combined: float | None = None
    parts_used: str = ""
    rating: int | None = None
    low_quality: bool | None = None
    scoring_duration_s: float | None = None
    unscorable_reason: str | None = None
    pending: bool = False
    schedule: str | None = None
    scored_on: str | None = None

    def fields(self) -> dict[str, FieldValue]:
        """Return the point's fields (None values included; the store leaves them out)."""
        data = asdict(self)
        return {name: data[name] for name in STORED_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """Return the API's JSON view."""
        return asdict(self)


_NOT_STORED = ("gpu", "status", "pending")
STORED_FIELDS = tuple(f.name for f in fields(QualityResult) if f.name not in _NOT_STORED)
_TEXT = (
    "job_id", "video_path", "parts_used", "unscorable_reason", "clip_reason", "i2v_reason", "schedule", "scored_on",
)  # fmt: skip

#: Declared types of the stored fields, for the store's schema (monitor.storage.schema.FIELD_TYPES[MEASUREMENT]).
FIELD_TYPES: Mapping[str, str] = {
    **{name: "float" for name in STORED_FIELDS},
    **{name: "str" for name in _TEXT},
    **{"static": "bool", "low_quality": "bool", "rating": "int"},
}


def from_point(point: Point) -> QualityResult:
    """Rebuild the result a `quality` point stores (points written before `clip_cos` was stored included)."""
    values: dict[str, Any] = {name: point.fields.get(name) for name in STORED_FIELDS}
    values["video_path"] = values["video_path"] or ""
    values["parts_used"] = values["parts_used"] or ""
    if values["clip_cos"] is None and values["clip_score"] is not None:
        values["clip_cos"] = float(values["clip_score"]) / 100.0  # the score is 100·max(cos, 0)
    status = UNSCORABLE if values["unscorable_reason"] else SCORED
    return QualityResult(gpu=point.tags.get("gpu", ""), status=status, **values)
