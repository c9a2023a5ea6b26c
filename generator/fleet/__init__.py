"""Queue mode: one API and any number of GPU workers on any hosts, sharing one Celery queue on Redis."""
