"""Measure a job's own peak GPU memory: what the card had to give for this job, whatever ran before it.

PyTorch's caching allocator keeps freed blocks reserved for the next allocation, and
`reset_peak_memory_stats()` sets the reserved high-water mark to what is reserved *now*. So after a 1024p/32-frame
job (28 GB on an H200) every later job, a 256p one included, reported 28 GB: the big job's blocks were still
reserved when the small job's peak was reset. A job's measurement therefore starts by handing the cache back to
the driver (`empty_cache()`): what stays reserved is what is live (the weights, cuBLAS workspaces), and the peak
reset from there can only grow with what this job allocates. Between jobs the worker releases the job's memory
(`gc.collect()`, then `empty_cache()`), so the card is free for other processes (the monitor's CLIP) meanwhile.

Two figures, in bytes, both including the weights the worker keeps resident:
- `reserved_bytes`: the most the allocator held from the card during the job: what the card had to give for it.
  This is what admission must budget and what the monitor's predictor learns. NVML's per-process figure is
  higher by the CUDA context (about 0.5 GB) and any memory outside torch's allocator.
- `allocated_bytes`: the most held by live tensors at once; reserved minus allocated is the allocator's
  rounding, cache and fragmentation within the job.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PeakMemory:
    """A job's peak GPU memory so far, in bytes."""

    reserved_bytes: int
    allocated_bytes: int


class JobMemory:
    """Start, read and end one job's memory measurement on a device; every call is a no-op off CUDA.

    The allocator's functions are injectable so the order of calls can be shown without a GPU.
    """

    def __init__(
        self,
        device: torch.device,
        *,
        empty_cache: Callable[[], None] = torch.cuda.empty_cache,
        reset_peak: Callable[[torch.device], None] = torch.cuda.reset_peak_memory_stats,
        max_reserved: Callable[[torch.device], int] = torch.cuda.max_memory_reserved,
        max_allocated: Callable[[torch.device], int] = torch.cuda.max_memory_allocated,
        collect: Callable[[], object] = gc.collect,
        on_cuda: bool | None = None,
    ) -> None:
        self.device = device
        self.on_cuda = device.type == "cuda" if on_cuda is None else on_cuda
        self._empty_cache, self._reset_peak = empty_cache, reset_peak
        self._max_reserved, self._max_allocated = max_reserved, max_allocated
        self._collect = collect

    def begin(self) -> None:
        """Start a job's measurement: give cached blocks back, then reset the peaks to what is live now."""
        if not self.on_cuda:
            return
        # The order matters: a reset before the cache is emptied would keep the previous job's reservation.
        self._empty_cache()
        self._reset_peak(self.device)

    def peak(self) -> PeakMemory | None:
        """Return the peaks since the last `begin()` (`release()` does not change them); None off CUDA."""
        if not self.on_cuda:
            return None
        return PeakMemory(int(self._max_reserved(self.device)), int(self._max_allocated(self.device)))

    def release(self) -> None:
        """End a job: free what it left unreferenced (cycles, a traceback's frames) and give the cache back."""
        self._collect()
        if self.on_cuda:
            self._empty_cache()
