"""Ask the monitor for a job's peak-memory estimate (learned from measured jobs); fall back to the table.

The answer carries the job's predicted time too (warm, and the warm-up a size new to the process adds once), which
the worker turns into the job's predicted run (generator/eta.py).

`MonitorPredictor.estimate(params, gpu)` calls the monitor's `GET /monitor/api/predict` with a short timeout
and keeps each answer for `ttl_s` per parameter set, so admission control asks at most once a minute per
shape. An expired answer (up to `max_stale_s` old) answers at once while the monitor is asked again in the
background, so only a shape never asked about waits on the monitor, for at most one timeout. When the monitor
does not answer (or answers nonsense), it is left alone for `retry_after_s`, and meanwhile the monitor's last
answer for the same job (up to `max_stale_s` old) answers, or else the design's table. The monitor answers from
its last fit at once, however long a fit takes, so a slow fit never sends admission to the table. Either way the
estimate says where it came from, and admission writes that in the job's notes.

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
MAX_CACHED = 256


class MonitorPredictor:
    """The monitor's predictions for this generator's GPUs, cached, with the table as the fallback.

    Args:
        monitor_url: the monitor's base URL.
        host_name: this generator's host tag (the monitor finds the GPU by host and index).
        timeout_s: connect and read timeouts of one request.
        ttl_s: how long an answer is reused for the same parameters and GPU.
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
        ttl_s: float = 60.0,
        retry_after_s: float = 30.0,
        max_stale_s: float = 3600.0,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = monitor_url.rstrip("/")
        self.host_name = host_name
        self.timeout_s, self.ttl_s, self.retry_after_s = timeout_s, ttl_s, retry_after_s
        self.max_stale_s = max_stale_s
        self._session = session or requests.Session()
        self._clock = clock
        self._cache: OrderedDict[tuple, tuple[float, MemoryEstimate]] = OrderedDict()
        self._down_until = 0.0
        self._down_reason = ""
        self._refreshing: set[tuple] = set()  # keys asked again in the background now
        self._lock = threading.Lock()

    def for_gpu(self, gpu: str) -> Callable[[JobParams], int]:
        """Return an estimate function for one GPU index (what a worker's admission control calls)."""
        return lambda params: self.estimate(params, gpu)

    def estimate(self, params: JobParams, gpu: str) -> MemoryEstimate:
        """Return the monitor's estimate (peak + margin) for a job on `gpu`, or the table's when it fails."""
        key = (params.resolution, params.num_frames, params.steps, params.guidance_scale, gpu)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
            down = now < self._down_until
            recent = cached is not None and now - (cached[0] - self.ttl_s) <= self.max_stale_s
            refresh = recent and not down and key not in self._refreshing
            if refresh:
                self._refreshing.add(key)
        if recent and not down:
            # An expired answer still answers at once and is asked again in the background: a job never waits
            # on the monitor for a shape asked about before (a hung monitor cost each such job the read timeout).
            if refresh:
                threading.Thread(
                    target=self._refresh, args=(key, params, gpu), name="predict-refresh", daemon=True
                ).start()
            return self._fallback(params, "asked again in the background", cached, now)
        if down:
            return self._fallback(params, self._down_reason, cached, now)
        try:
            answer = self._predict(params, gpu)
        except (requests.RequestException, ValueError, KeyError, TypeError) as e:
            return self._fallback(params, self._failed(e, now), cached, now)
        self._keep(key, answer, now)
        return answer

    def _refresh(self, key: tuple, params: JobParams, gpu: str) -> None:
        """Ask the monitor again for an expired answer (a background thread); keep the new one."""
        try:
            self._keep(key, self._predict(params, gpu), self._clock())
        except (requests.RequestException, ValueError, KeyError, TypeError) as e:
            self._failed(e, self._clock())
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def _keep(self, key: tuple, answer: MemoryEstimate, now: float) -> None:
        with self._lock:
            self._cache[key] = (now + self.ttl_s, answer)
            self._cache.move_to_end(key)
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)

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

    def _fallback(
        self, params: JobParams, reason: str, cached: tuple[float, MemoryEstimate] | None, now: float
    ) -> MemoryEstimate:
        """Return the monitor's last answer for this job when recent enough, else the table's estimate."""
        if cached is not None and now - (cached[0] - self.ttl_s) <= self.max_stale_s:
            age_s = now - (cached[0] - self.ttl_s)
            return cached[1].said(f"{cached[1].source}; its answer from {age_s:.0f} s ago ({reason})")
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
