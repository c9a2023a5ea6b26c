"""GPU sampling: NVML is read in `monitor.gpu.nvml` and nowhere else."""
