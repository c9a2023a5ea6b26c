"""The error queue mode raises when Redis cannot be reached, importable without Celery or Redis installed."""


class QueueUnavailable(Exception):
    """Redis (the broker and the job store) cannot be reached; the message says which and why."""
