"""Ask the monitor for a job's peak-memory estimate (learned from measured jobs); fall back to the table.

The answer carries the job's predicted time too (warm, and the warm-up a size new to the process adds once), which
the worker turns into the job's predicted run (generator/eta.py).

`MonitorPredictor.estimate(params, gpu)` asks the monitor's `GET /monitor/api/predict` for every admission, with a
short timeout: the monitor answers from its last fit in milliseconds, and only a fresh answer knows the jobs
measured since. (Answers kept for a minute, or served while asked again behind, were from an older fit: on an H200
the prior's 15.6 GB for 512p/16, given before any job was measured, still degraded a job that fitted two minutes
and fourteen measured jobs later.) When the monitor does not answer (or answers nonsense), it is left alone for
`retry_after_s`, so a hung monitor costs one job one timeout, not every job; meanwhile the monitor's last answer
for the same job (up to `max_stale_s` old) answers, or else the design's table. Either way the estimate says
where it came from, and admission writes that in the job's notes.

The blueprint proxies the monitor's recommendation and prediction for the generator's page (one origin):
- `GET /api/recommendation[?guidance=&max_time_s=&gpu=]`: the best parameters that fit this generator's GPU
  now (its first GPU unless `gpu=` names another of its workers'). In queue mode the API has no GPU: the
  fleet's ready worker with the most memory for a job (or the one `host=`/`gpu=` name) is asked about.
- `GET /api/predict?resolution=&frames=&steps=[&guidance=&gpu=&host=]`: whether a job of those parameters fits now.
Both answer the monitor's JSON and status; 503 when no monitor is configured or (queue mode) no worker is ready,
400 when `gpu=`/`host=` name none of the workers, 504 when the monitor does not answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import requests
from flask import Blueprint, Response, current_app, jsonify, request

from common.sizing import GiB
from generator.admission import MemoryEstimate, table_estimate
from generator.fleet_status import NoAdviceTarget, advice_target
from generator.validation import JobParams

log = logging.getLogger(__name__)

PREDICT_PATH = "/monitor/api/predict"
RECOMMENDATION_PATH = "/monitor/api/recommendation"
TIMEOUT_S = (0.5, 1.5)  # connect, read
MAX_KEPT = 256  # last answers kept for when the monitor is down


class MonitorPredictor:
    """The monitor's predictions for this generator's GPUs, asked afresh, with its last answers and the table behind.

    Args:
        monitor_url: the monitor's base URL.
        host_name: this generator's host tag (the monitor finds the GPU by host and index).
        timeout_s: connect and read timeouts of one request.
        retry_after_s: after a failure, how long the monitor is not asked (its last answers or the table answer).
        max_stale_s: the oldest answer of the monitor that still answers for the same job while it is down.
        session: the HTTP session (tests may pass their own).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        monitor_url: str,
        host_name: str,
        *,
        timeout_s: tuple[float, float] = TIMEOUT_S,
        retry_after_s: float = 30.0,
        max_stale_s: float = 3600.0,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = monitor_url.rstrip("/")
        self.host_name = host_name
        self.timeout_s, self.retry_after_s, self.max_stale_s = timeout_s, retry_after_s, max_stale_s
        self._session = session or requests.Session()
        self._clock = clock
        self._last: OrderedDict[tuple, tuple[float, MemoryEstimate]] = OrderedDict()  # key -> (when, answer)
        self._down_until = 0.0
        self._down_reason = ""
        self._lock = threading.Lock()

    def for_gpu(self, gpu: str) -> Callable[[JobParams], int]:
        """Return an estimate function for one GPU index (what a worker's admission control calls)."""
        return lambda params: self.estimate(params, gpu)

    def estimate(self, params: JobParams, gpu: str) -> MemoryEstimate:
        """Return the monitor's estimate (peak + margin) for a job on `gpu`, else its last answer or the table's."""
        key = (params.resolution, params.num_frames, params.steps, params.guidance_scale, gpu)
        now = self._clock()
        with self._lock:
            down, reason = now < self._down_until, self._down_reason
        if down:
            return self._fallback(key, params, reason, now)
        try:
            answer = self._predict(params, gpu)
        except (requests.RequestException, ValueError, KeyError, TypeError) as e:
            return self._fallback(key, params, self._failed(e, now), now)
        with self._lock:
            self._last[key] = (now, answer)
            self._last.move_to_end(key)
            while len(self._last) > MAX_KEPT:
                self._last.popitem(last=False)
        return answer

    def _failed(self, error: Exception, now: float) -> str:
        """Leave the monitor alone for retry_after_s; return why, for the notes."""
        reason = f"the monitor did not answer ({type(error).__name__}); asking again in {self.retry_after_s:.0f} s"
        with self._lock:
            self._down_until, self._down_reason = now + self.retry_after_s, reason
        log.warning("memory estimate without the monitor: %s", reason)
        return reason

    def _predict(self, params: JobParams, gpu: str) -> MemoryEstimate:
        query: dict[str, str | int | float] = {
            "resolution": params.resolution,
            "frames": params.num_frames,
            "steps": params.steps,
            "guidance": params.guidance_scale,
            "gpu": gpu,
            "host": self.host_name,
        }
        response = self._session.get(self.base_url + PREDICT_PATH, params=query, timeout=self.timeout_s)
        if response.status_code != 200:
            raise ValueError(f"status {response.status_code}")
        body = response.json()
        memory = body["memory"]
        need = memory["estimate_bytes"]
        if isinstance(need, bool) or not isinstance(need, int) or need <= 0:
            raise ValueError(f"estimate_bytes {need!r}")
        how = body.get("how") or memory.get("source", "")
        peak, margin = memory.get("peak_bytes", need), memory.get("margin_bytes", 0)
        source = (
            f"memory estimate from the monitor: {need / GiB:.1f} GB ({peak / GiB:.1f} GB predicted + "
            f"{margin / GiB:.1f} GB margin; {how})"
        )
        time = body.get("time") or {}
        return MemoryEstimate(need, source, _seconds(time.get("seconds")), _seconds(time.get("warmup_s")))

    def _fallback(self, key: tuple, params: JobParams, reason: str, now: float) -> MemoryEstimate:
        """Return the monitor's last answer for this job when recent enough, else the table's estimate."""
        with self._lock:
            kept = self._last.get(key)
        if kept is not None and now - kept[0] <= self.max_stale_s:
            return kept[1].said(f"{kept[1].source}; its answer from {now - kept[0]:.0f} s ago ({reason})")
        need = table_estimate(params)
        return MemoryEstimate(need, f"memory estimate from the table: {need / GiB:.1f} GB ({reason})")

    def proxy(self, path: str, query: dict[str, Any]) -> tuple[Any, int]:
        """GET a monitor route; return its JSON and status (504 with a message when it does not answer)."""
        try:
            response = self._session.get(self.base_url + path, params=query, timeout=self.timeout_s)
            return response.json(), response.status_code
        except (requests.RequestException, ValueError) as e:
            return {"error": f"the monitor at {self.base_url} did not answer ({type(e).__name__}): try again"}, 504


def _seconds(value: Any) -> float | None:
    """Return a predicted number of seconds, or None where the answer has none (a monitor from before it)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return None
    return float(value)


advice = Blueprint("advice", __name__)


def _proxy(path: str, names: tuple[str, ...]) -> tuple[Response, int]:
    runtime = current_app.extensions["generator"]
    predictor: MonitorPredictor | None = getattr(runtime, "predictor", None)
    if predictor is None:
        message = "no monitor is configured: start the generator with --monitor-url (env GENERATOR_MONITOR_URL)"
        return jsonify(error=message), 503
    try:
        host, gpu = advice_target(runtime, request.args.get("host") or None, request.args.get("gpu") or None)
    except NoAdviceTarget as refused:
        return jsonify(error=str(refused)), refused.status
    query: dict[str, Any] = {name: request.args[name] for name in names if request.args.get(name)}
    query["gpu"] = gpu
    query["host"] = host
    body, status = predictor.proxy(path, query)
    return jsonify(body), status


@advice.get("/api/recommendation")
def recommendation() -> tuple[Response, int]:
    """Return the monitor's recommendation for this generator's GPU (see monitor/web/advice.py)."""
    return _proxy(RECOMMENDATION_PATH, ("guidance", "max_time_s"))


@advice.get("/api/predict")
def predict() -> tuple[Response, int]:
    """Return the monitor's prediction for a job on this generator's GPU, and whether it fits now."""
    return _proxy(PREDICT_PATH, ("resolution", "frames", "steps", "guidance"))
