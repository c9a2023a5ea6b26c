"""Single-host mode, the embedded default, runs without queue mode's packages (Celery, kombu, Redis) installed."""

from __future__ import annotations

import subprocess
import sys

from bench.harness import ROOT

HIDE_QUEUE_PACKAGES = (
    "import sys\n"
    "for name in ('celery', 'kombu', 'redis', 'billiard'):\n"
    "    sys.modules[name] = None  # importing it now raises ImportError\n"
)


def test_the_generator_and_its_app_import_without_celery_kombu_or_redis() -> None:
    code = HIDE_QUEUE_PACKAGES + (
        "import generator.__main__, generator.app\n"
        "from generator.fleet.unavailable import QueueUnavailable\n"
        "print('imported')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"
