"""A job's peak memory is its own: shown on a model of PyTorch's caching allocator, since CI has no GPU.

The model keeps what matters here: freed blocks stay reserved (cached) and are reused, `empty_cache()` gives
the cached ones back, and `reset_peak_memory_stats()` sets the peaks to what is reserved and allocated now.
The GPU proof (a small job after a big one within 5% of the same job in a fresh process) is
`python -m bench.gpu_acceptance`.
"""

from __future__ import annotations

import torch

from generator.peak_memory import JobMemory, PeakMemory

GB = 10**9
CUDA = torch.device("cuda", 0)


class CachingAllocator:
    """PyTorch's caching allocator as far as peaks go: reserved = allocated + cached."""

    def __init__(self, resident_bytes: int) -> None:
        self.allocated = self.reserved = resident_bytes
        self.peak_allocated = self.peak_reserved = resident_bytes
        self.calls: list[str] = []

    def run_job(self, activations_bytes: int) -> None:
        """Allocate a job's activations (from the cache first), then free them back into the cache."""
        self.allocated += activations_bytes
        self.reserved = max(self.reserved, self.allocated)
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        self.allocated -= activations_bytes

    def empty_cache(self) -> None:
        self.calls.append("empty_cache")
        self.reserved = self.allocated

    def reset_peak(self, device: torch.device) -> None:
        self.calls.append("reset_peak")
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    def collect(self) -> int:
        self.calls.append("collect")
        return 0

    def job_memory(self) -> JobMemory:
        return JobMemory(
            CUDA,
            empty_cache=self.empty_cache,
            reset_peak=self.reset_peak,
            max_reserved=lambda device: self.peak_reserved,
            max_allocated=lambda device: self.peak_allocated,
            collect=self.collect,
        )


def measure(allocator: CachingAllocator, memory: JobMemory, activations_bytes: int) -> PeakMemory | None:
    """Run one job the way the worker does: begin, run, read, release."""
    memory.begin()
    allocator.run_job(activations_bytes)
    peak = memory.peak()
    memory.release()
    return peak


def test_a_small_job_after_a_big_one_reports_what_it_reports_in_a_fresh_process() -> None:
    fresh = CachingAllocator(resident_bytes=5 * GB)
    small_fresh = measure(fresh, fresh.job_memory(), 3 * GB)

    used = CachingAllocator(resident_bytes=5 * GB)
    memory = used.job_memory()
    big = measure(used, memory, 23 * GB)
    small_after_big = measure(used, memory, 3 * GB)

    assert big == PeakMemory(reserved_bytes=28 * GB, allocated_bytes=28 * GB)
    assert small_fresh == small_after_big == PeakMemory(reserved_bytes=8 * GB, allocated_bytes=8 * GB)


def test_resetting_the_peaks_without_emptying_the_cache_first_reports_the_big_job() -> None:
    """The bug the order of `begin()` prevents: the reset keeps what the previous job left reserved."""
    allocator = CachingAllocator(resident_bytes=5 * GB)
    allocator.run_job(23 * GB)
    allocator.reset_peak(CUDA)
    allocator.run_job(3 * GB)
    assert allocator.peak_reserved == 28 * GB


def test_begin_empties_the_cache_before_resetting_and_release_collects_before_emptying() -> None:
    allocator = CachingAllocator(resident_bytes=5 * GB)
    memory = allocator.job_memory()
    memory.begin()
    assert allocator.calls == ["empty_cache", "reset_peak"]
    allocator.calls.clear()
    memory.release()
    assert allocator.calls == ["collect", "empty_cache"]


def test_release_keeps_the_peaks_for_a_failed_job_to_report() -> None:
    allocator = CachingAllocator(resident_bytes=5 * GB)
    memory = allocator.job_memory()
    memory.begin()
    allocator.run_job(10 * GB)
    memory.release()  # an OOM's memory is released before the failure is reported
    assert memory.peak() == PeakMemory(15 * GB, 15 * GB)


def test_off_cuda_nothing_is_called_and_there_is_no_peak() -> None:
    calls: list[str] = []
    memory = JobMemory(
        torch.device("cpu"),
        empty_cache=lambda: calls.append("empty_cache"),
        reset_peak=lambda device: calls.append("reset_peak"),
        collect=lambda: calls.append("collect"),
    )
    memory.begin()
    assert memory.peak() is None
    memory.release()
    assert calls == ["collect"]
