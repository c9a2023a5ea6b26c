"""The Celery application both sides share: the API publishes `i2v.run_job(job_id)`, GPU workers consume it.

Settings, and why:
- Late acknowledgement, prefetch 1, concurrency 1, solo pool: a worker holds exactly the job it runs, a job
  held by a dead worker is not acknowledged, and the model loaded in the worker's own process is the one that
  runs (CUDA does not survive the fork of Celery's default prefork pool).
- `task_reject_on_worker_lost`: a pool child that dies hands its message back rather than acknowledging it.
- Redis has no native priorities: kombu keeps one list per priority step and reads them in order
  (`priority_steps`, 0 is served first on Redis); `queue_order_strategy` "priority" keeps that order.
- `visibility_timeout` must exceed the longest job, or Redis hands a running job's message to a second worker
  (the job store's claim would skip it, but the time is wasted). A SIGKILLed worker's message comes back only
  after it, so a dead worker's job is recovered sooner by the job store's lease sweep.
"""

from __future__ import annotations

from celery import Celery

from generator.validation import PRIORITIES

TASK_NAME = "i2v.run_job"
QUEUE_NAME = "i2v-jobs"
PRIORITY_STEP = dict(zip(PRIORITIES, (0, 3, 6), strict=True))


def make_celery(broker_url: str, visibility_timeout_s: float, connect_timeout_s: float = 2.0) -> Celery:
    """Return the Celery app for `broker_url` (redis://host:port/db) with the settings above."""
    app = Celery("i2v", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE_NAME,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        result_backend=None,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="solo",
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_enable_remote_control=False,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=connect_timeout_s,
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s,
            "priority_steps": sorted(PRIORITY_STEP.values()),
            "sep": ":",
            "queue_order_strategy": "priority",
            "socket_connect_timeout": connect_timeout_s,
            "socket_timeout": 10,
        },
        # A submission answers 503 within seconds when Redis is gone, never hangs.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
    )
    return app


def publish(app: Celery, job_id: str, priority: str) -> None:
    """Put a job's task on the queue at its priority's list."""
    app.send_task(TASK_NAME, args=[job_id], queue=QUEUE_NAME, priority=PRIORITY_STEP[priority])
