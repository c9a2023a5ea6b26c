"""Check a job submission field by field; each refusal names the field, the value and what is allowed."""

from __future__ import annotations

import io
import math
import secrets
import unicodedata
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from common.sizing import DEFAULTS, LIMITS, RESOLUTIONS

MAX_PROMPT_CHARS = 500
# Scheduling classes in the order they are served (queue mode); a job that waits too long is served as the first.
PRIORITIES = ("high", "normal", "batch")
IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
# A decoded image larger than this is a decompression bomb: 4096 x 4096 RGB is 48 MB of pixels.
MAX_IMAGE_PIXELS = 4096 * 4096


class ValidationError(ValueError):
    """A refused submission: `status` is the HTTP code, the rest goes into the JSON answer."""

    def __init__(self, status: int, field: str, message: str, value: Any = None, allowed: Any = None) -> None:
        super().__init__(message)
        self.status, self.field, self.value, self.allowed = status, field, value, allowed

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON body of the 4xx answer."""
        body = {"error": str(self), "field": self.field, "allowed": self.allowed}
        if self.value is not None:
            body["value"] = self.value if isinstance(self.value, int | float) else str(self.value)[:100]
        return body


@dataclass(frozen=True)
class JobParams:
    """The generation parameters of one job."""

    resolution: int
    num_frames: int
    steps: int
    guidance_scale: float
    fps: int
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as a plain dict (event and API format)."""
        # Written out: dataclasses.asdict deep-copies field by field, a third of a job listing's time.
        return {
            "resolution": self.resolution,
            "num_frames": self.num_frames,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "fps": self.fps,
            "seed": self.seed,
        }


def parse_priority(form: Mapping[str, str]) -> str:
    """Read the optional `priority` field: one of PRIORITIES, `normal` when absent."""
    raw = form.get("priority") or "normal"
    if raw not in PRIORITIES:
        raise ValidationError(
            400, "priority", f"priority must be one of {', '.join(PRIORITIES)}", raw, list(PRIORITIES)
        )
    return raw


def parse_params(form: Mapping[str, str]) -> JobParams:
    """Read and range-check the numeric fields, using DEFAULTS where a field is absent."""
    values: dict[str, Any] = {}
    raw_resolution = form.get("resolution") or DEFAULTS["resolution"]
    resolution = _number("resolution", raw_resolution, integer=True)
    if resolution not in RESOLUTIONS:
        raise ValidationError(
            400, "resolution", f"resolution must be one of {list(RESOLUTIONS)}", raw_resolution, list(RESOLUTIONS)
        )
    values["resolution"] = resolution
    for name, (low, high) in LIMITS.items():
        raw = form.get(name)
        if raw in (None, ""):
            if name == "seed":  # chosen here and recorded, so that every clip can be made again
                values[name] = secrets.randbelow(int(high) + 1)
                continue
            raw = DEFAULTS[name]
        number = _number(name, raw, integer=name != "guidance_scale")
        if not low <= number <= high:
            raise ValidationError(400, name, f"{name} must be between {low:g} and {high:g}", raw, [low, high])
        values[name] = number
    return JobParams(**values)


def _number(name: str, raw: Any, *, integer: bool) -> Any:
    kind = "an integer" if integer else "a number"
    try:
        number = float(raw)
    except (TypeError, ValueError):
        raise ValidationError(400, name, f"{name} must be {kind}", raw) from None
    if not math.isfinite(number) or (integer and number != int(number)):
        raise ValidationError(400, name, f"{name} must be {kind}", raw)
    return int(number) if integer else number


def parse_prompt(raw: str | None) -> str:
    """Return the prompt, refusing an empty one, an overlong one or one with control characters."""
    prompt = (raw or "").strip()
    if not prompt:
        raise ValidationError(400, "prompt", "prompt must not be empty", allowed=[1, MAX_PROMPT_CHARS])
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValidationError(
            400, "prompt", f"prompt must be at most {MAX_PROMPT_CHARS} characters", len(prompt), [1, MAX_PROMPT_CHARS]
        )
    if any(_is_refused_character(ch) for ch in prompt):
        raise ValidationError(400, "prompt", "prompt must not contain control characters or bidirectional overrides")
    return prompt


# Unicode's bidirectional embeddings, overrides and isolates: they reorder how the text around them displays
# (the "Trojan Source" trick), so a prompt shown in a job list could read differently from what was run.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _is_refused_character(ch: str) -> bool:
    """Return whether a prompt may not contain `ch`: control characters (C0, DEL, C1) but tab and newline."""
    return (unicodedata.category(ch) == "Cc" and ch not in "\t\n") or ch in _BIDI_CONTROLS


def _open_image(data: bytes, allowed: list[str]) -> Image.Image:
    """Read the header only; PIL's bomb check runs here, on the declared size, before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValidationError(413, "image", "image has too many pixels (decompression bomb)", allowed=allowed) from None
    except UnidentifiedImageError:
        raise ValidationError(415, "image", "image is not a PNG, JPEG or WebP file", allowed=allowed) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValidationError(400, "image", f"image does not decode: {error}", allowed=allowed) from None


def parse_image(data: bytes, max_bytes: int) -> Image.Image:
    """Decode an uploaded PNG, JPEG or WebP fully and return it as RGB; refuse anything else."""
    allowed = sorted(IMAGE_FORMATS.values())
    if not data:
        raise ValidationError(400, "image", "image is required (a PNG, JPEG or WebP file)", allowed=allowed)
    if len(data) > max_bytes:
        raise ValidationError(413, "image", f"image must be at most {max_bytes // 2**20} MB", len(data), max_bytes)
    image = _open_image(data, allowed)
    if image.format not in IMAGE_FORMATS:
        raise ValidationError(415, "image", "image must be PNG, JPEG or WebP", image.format, allowed)
    pixels = image.width * image.height
    if pixels > MAX_IMAGE_PIXELS:
        raise ValidationError(413, "image", "image has too many pixels (decompression bomb?)", pixels, MAX_IMAGE_PIXELS)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise ValidationError(400, "image", f"image does not decode: {error}", allowed=allowed) from None
    return image.convert("RGB")
