"""Bad and odd input over real HTTP (waitress): uploads, prompts, request bodies, and path traversal.

tests/generator/test_api.py covers the basic refusals (empty, GIF, PDF, a truncated PNG, a PNG bomb, prompt
length and a control character, every numeric field's range, an upload over 20 MB); these add what it does
not: bombs in every accepted format and in compressed PNG chunks, truncated JPEG and WebP, odd but valid
images, wrong request content types, broken multipart, prompts with every kind of control character and
huge lengths, deeply nested JSON, and traversal attempts on every route that serves a file.
"""

from __future__ import annotations

import http.client
import io
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask
from PIL import Image

from tests.api.conftest import TOKEN
from tests.servers import AppServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def generator_url(generator_app: Flask) -> Iterator[str]:
    """The generator's app (no model: jobs stay queued) served by waitress."""
    server = AppServer(generator_app).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def monitor_url(monitor_app: Flask) -> Iterator[str]:
    """The monitor's app served by waitress."""
    server = AppServer(monitor_app).start()
    yield server.url
    server.stop()


def encoded(fmt: str, size: tuple[int, int] = (64, 64), mode: str = "RGB", **options: object) -> bytes:
    """Return an image of `size` saved as `fmt`."""
    buffer = io.BytesIO()
    Image.new(mode, size, 100 if mode in ("L", "P", "I;16") else None).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise_png(side: int) -> bytes:
    """Return a PNG of random pixels (it does not compress: cutting its bytes cuts its pixels)."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """Return one PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_dimensions(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims `width` x `height` (a decompression bomb's header)."""
    data = encoded("PNG")
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + png_chunk(b"IHDR", ihdr) + data[33:]


def jpeg_with_dimensions(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header (SOF0) claims `width` x `height`."""
    data = bytearray(encoded("JPEG"))
    at = data.index(b"\xff\xc0") + 5  # marker, length (2), precision (1), then height and width
    data[at : at + 4] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_with_dimensions(width: int, height: int) -> bytes:
    """A small lossless WebP whose VP8L header claims `width` x `height` (14 bits each)."""
    data = bytearray(encoded("WEBP", lossless=True))
    at = data.index(b"VP8L") + 9  # chunk id, size (4), signature byte 0x2f
    bits = int.from_bytes(data[at : at + 4], "little")
    bits = (bits & ~0x0FFFFFFF) | (width - 1) | ((height - 1) << 14)
    data[at : at + 4] = bits.to_bytes(4, "little")
    return bytes(data)


def png_with_text_bomb() -> bytes:
    """A valid PNG with a zTXt chunk that inflates from about 100 KB to 100 MB."""
    data = encoded("PNG")
    bomb = png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"\0" * 100_000_000, 9))
    return data[:33] + bomb + data[33:]


def submit(url: str, image: bytes, **fields: str) -> requests.Response:
    """POST a job with `image` (declared image/png whatever it is)."""
    data = {"prompt": "a red fox", "resolution": "256", "num_frames": "8", "steps": "10", **fields}
    return requests.post(f"{url}/api/jobs", data=data, files={"image": ("input.png", image, "image/png")}, timeout=30)


def raw(url: str, path: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> tuple:
    """Send a request with exactly this path (no client-side normalisation); return status, type, body.

    A 308 (Werkzeug merging a doubled slash, e.g. from `%2f` after a `/`) is followed once, as a browser would.
    """
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        answer = response.status, response.getheader("Content-Type") or "", response.read()
        location = response.getheader("Location")
    finally:
        connection.close()
    if answer[0] == 308 and location:
        return raw(url, urlsplit(location).path, method, body, headers)
    return answer


# ---- uploads -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "image", "status"),
    [
        ("PNG claiming 65535x65535", png_with_dimensions(65535, 65535), 413),
        ("PNG just over the pixel limit", png_with_dimensions(4097, 4096), 413),
        ("JPEG claiming 30000x30000", jpeg_with_dimensions(30000, 30000), 413),
        ("WebP claiming 16384x16384", webp_with_dimensions(16384, 16384), 413),
        ("PNG with a 100 MB zTXt chunk", png_with_text_bomb(), 400),
        ("truncated JPEG", encoded("JPEG", (256, 256))[:400], 400),
        ("truncated WebP", encoded("WEBP", (256, 256))[:60], 400),
        ("JPEG cut before its end marker", encoded("JPEG", (256, 256))[:-200], 400),
        ("BMP", encoded("BMP"), 415),
        ("TIFF", encoded("TIFF"), 415),
        ("ICO", encoded("ICO", (32, 32)), 415),
        ("SVG text", b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', 415),
        ("HTML", b"<html><script>alert(1)</script></html>", 415),
        ("random bytes", bytes(range(256)) * 40, 415),
        ("PNG signature only", b"\x89PNG\r\n\x1a\n", 415),
    ],
)
def test_bad_uploads_are_refused_quickly_with_a_json_reason(
    generator_url: str, name: str, image: bytes, status: int
) -> None:
    started = time.monotonic()
    answer = submit(generator_url, image)
    assert time.monotonic() - started < 5, f"{name}: the refusal took too long (decoded the bomb?)"
    assert answer.status_code == status, f"{name}: {answer.text}"
    assert answer.json()["field"] == "image"
    assert answer.json()["error"]


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("palette PNG with transparency", encoded("PNG", mode="P", transparency=0)),
        ("16-bit grayscale PNG", encoded("PNG", mode="I;16")),
        ("RGBA PNG", encoded("PNG", mode="RGBA")),
        ("CMYK JPEG", encoded("JPEG", mode="CMYK")),
        ("progressive JPEG", encoded("JPEG", progressive=True)),
        ("grayscale JPEG", encoded("JPEG", mode="L")),
        ("lossy WebP", encoded("WEBP")),
        ("1x1 PNG", encoded("PNG", (1, 1))),
        ("PNG at the pixel limit", encoded("PNG", (4096, 4096), mode="L")),
    ],
)
def test_odd_but_valid_images_are_accepted(generator_url: str, name: str, image: bytes) -> None:
    answer = submit(generator_url, image)
    assert answer.status_code in (202, 429), f"{name}: {answer.text}"  # 429: the idle queue filled up


def test_a_request_that_is_not_multipart_is_refused_naming_the_image(generator_url: str) -> None:
    as_json = requests.post(f"{generator_url}/api/jobs", json={"prompt": "x", "image": "aGVsbG8="}, timeout=10)
    as_text = requests.post(
        f"{generator_url}/api/jobs", data=b"prompt=x", headers={"Content-Type": "text/plain"}, timeout=10
    )
    image_as_field = requests.post(f"{generator_url}/api/jobs", data={"prompt": "x", "image": "x"}, timeout=10)
    for answer in (as_json, as_text, image_as_field):
        assert answer.status_code == 400
        assert answer.json()["field"] == "image"


# Werkzeug leaves the temporary file of a part cut short to the garbage collector (it closes it then).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_broken_multipart_bodies_are_refused_not_crashed_on(generator_url: str) -> None:
    image = noise_png(256)
    part = (
        b'--B\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na fox\r\n'
        b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--B--\r\n"
    )
    multipart = {"Content-Type": "multipart/form-data; boundary=B"}
    cut_inside_the_image = raw(generator_url, "/api/jobs", "POST", part[: len(part) // 2], multipart)
    no_boundary = raw(generator_url, "/api/jobs", "POST", part, {"Content-Type": "multipart/form-data"})
    wrong_boundary = raw(generator_url, "/api/jobs", "POST", part, {"Content-Type": "multipart/form-data; boundary=Z"})
    for status, content_type, _ in (cut_inside_the_image, no_boundary, wrong_boundary):
        assert status == 400
        assert content_type == "application/json"


# ---- prompts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        "nul\x00byte",
        "escape \x1b[31mred\x1b[0m",
        "carriage\rreturn",
        "delete\x7f",
        "c1\x85next line",
        "bidi \u202eevil\u202c",
        "isolate \u2066x\u2069",
        "x" * 501,
        "\u00e9" * 501,  # 501 characters of two bytes each: characters are counted, not bytes
    ],
)
def test_prompts_with_control_characters_or_overlong_are_refused(generator_url: str, prompt: str) -> None:
    answer = submit(generator_url, encoded("PNG"), prompt=prompt)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "prompt"


@pytest.mark.parametrize(
    "prompt",
    [
        "a fox\tin the snow\nat dusk",
        "\u72d0\u72f8\u5728\u96ea\u4e2d\u5954\u8dd1",  # CJK
        "\u062b\u0639\u0644\u0628 \u0641\u064a \u0627\u0644\u062b\u0644\u062c",  # Arabic, right to left by itself
        "family \U0001f468\u200d\U0001f469\u200d\U0001f467",  # emoji joined by ZWJ
        "x" * 500,
    ],
)
def test_prompts_in_any_script_are_accepted(generator_url: str, prompt: str) -> None:
    answer = submit(generator_url, encoded("PNG"), prompt=prompt)
    assert answer.status_code in (202, 429), answer.text
    if answer.status_code == 202:
        assert answer.json()["prompt"] == prompt


def test_a_huge_prompt_is_refused_before_it_is_read_whole(generator_url: str) -> None:
    answer = submit(generator_url, encoded("PNG"), prompt="x" * 5_000_000)
    assert answer.status_code == 413
    assert "prompt at most 500 characters" in answer.json()["error"]


def test_a_prompt_that_is_not_utf8_does_not_crash(generator_url: str) -> None:
    body = (
        b'--B\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n\xff\xfe\xc3( not utf-8\r\n'
        b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + encoded("PNG") + b"\r\n--B--\r\n"
    )
    status, content_type, _ = raw(
        generator_url, "/api/jobs", "POST", body, {"Content-Type": "multipart/form-data; boundary=B"}
    )
    assert status in (202, 400, 429)
    assert content_type == "application/json"


# ---- JSON bodies -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000),
        ("not UTF-8", b'{"events": ["\xff\xfe"]}'),
        ("a JSON string", b'"events"'),
        ("NaN", b'{"events": NaN}'),
        ("empty", b""),
    ],
)
def test_event_ingest_refuses_malformed_json_with_400(monitor_url: str, name: str, body: bytes) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    status, content_type, text = raw(monitor_url, "/monitor/api/events", "POST", body, headers)
    assert status == 400, f"{name}: {text[:200]!r}"
    assert content_type == "application/json"


# ---- path traversal ----------------------------------------------------------------------------------------

TRAVERSALS = [
    "..%2f..%2fapp.py",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fapp.py",
    "..%5c..%5capp.py",
    "..%252f..%252fapp.py",
    "%2fetc%2fpasswd",
    "..%c0%af..%c0%afapp.py",
    "app.css%00.py",
    "....%2f%2f....%2f%2fapp.py",
    "../../app.py",
]
FILE_ROUTES = {
    "generator": ["/static/{}", "/api/jobs/{}/video", "/api/jobs/{}"],
    "monitor": ["/monitor/static/{}", "/static/{}", "/monitor/vendor/{}", "/monitor/api/jobs/{}/quality"],
}
SECRETS = (b"import ", b"root:", b"def ", b"SECRET")


@pytest.mark.parametrize("service", ["generator", "monitor"])
def test_no_file_route_serves_anything_outside_its_folder(
    service: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue(f"{service}_url")
    for route in FILE_ROUTES[service]:
        for attempt in TRAVERSALS:
            path = route.format(attempt)
            status, _, body = raw(url, path)
            assert status in (400, 404, 409), f"{path}: {status} {body[:120]!r}"
            assert not any(secret in body for secret in SECRETS), f"{path} served a file: {body[:120]!r}"
    # The routes do serve their own files: the refusals above are not a route that serves nothing.
    own = "/static/app.css" if service == "generator" else "/monitor/static/dashboard.css"
    assert raw(url, own)[0] == 200


# The ack's body is optional, but one that does not parse is refused saying what to send.
@pytest.mark.parametrize(
    ("path", "expected"), [("/monitor/api/jobs/x/rating", 400), ("/monitor/api/alerts/x/ack", 400)]
)
def test_deeply_nested_json_elsewhere_is_refused_not_a_500(monitor_url: str, path: str, expected: int) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    status, _, _ = raw(monitor_url, path, "POST", b"[" * 100_000 + b"]" * 100_000, headers)
    assert status == expected
