"""A real store whose reads of one measurement can be held back or made to fail on purpose (slow-fit tests)."""

from __future__ import annotations

import threading
from typing import Any, cast

from monitor.storage import Store
from monitor.storage.base import StoreUnavailable


class GatedStore:
    """Pass everything to `store`; reads of `measurement` wait while held, or fail while failing."""

    def __init__(self, store: Store, measurement: str = "job_summary") -> None:
        self.store, self.measurement = store, measurement
        self.reads = 0
        self.waiting = threading.Event()  # a read is being held back now
        self._open = threading.Event()
        self._open.set()
        self.failing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def as_store(self) -> Store:
        """Return this wrapper typed as the Store it stands for (everything not gated passes through)."""
        return cast(Store, self)

    def hold(self) -> None:
        """Hold back every later read of the measurement until `release()`."""
        self._open.clear()

    def release(self) -> None:
        """Let held reads go on."""
        self._open.set()

    def query_points(self, measurement: str, *args: Any, **kwargs: Any) -> Any:
        """Read through, counting, holding or failing reads of the gated measurement."""
        if measurement == self.measurement:
            self.reads += 1
            if self.failing:
                raise StoreUnavailable("the store is down (on purpose)")
            if not self._open.is_set():
                self.waiting.set()
                self._open.wait(60)  # a deadline, so a broken test cannot hang the suite
                self.waiting.clear()
        return self.store.query_points(measurement, *args, **kwargs)
