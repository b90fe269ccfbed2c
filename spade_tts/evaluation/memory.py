"""Peak memory of one model's synthesis, on GPU and on CPU.

GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``: the most bytes
the PyTorch allocator handed out at once (weights, KV cache, activations), as papers report.
It excludes the CUDA context and the allocator's cached-but-free blocks.

CPU: the peak resident set size (RSS) of the whole process: weights, activations, but also
the Python interpreter, torch's own libraries and anything loaded before (the ASR and speaker
models are loaded before the first model is measured, so every model carries the same
baseline). On Linux the peak is reset before each model by writing 5 to
/proc/self/clear_refs and read back as VmHWM, so each model gets its own peak; where that is
not possible, ``resource.getrusage`` gives the process-lifetime peak, which only ever grows,
and ``kind`` says so. ``baseline_bytes`` is the RSS just before the model was loaded: the
model's own share is roughly ``peak - baseline``.
"""
from __future__ import annotations

import gc
import resource
import sys
from pathlib import Path


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return _lifetime_peak()


def _lifetime_peak() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


class PeakMemory:
    """``start()`` before loading a model, ``read()`` after its last synthesis."""

    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda")
        self.kind = ""
        self.baseline = 0

    def start(self) -> None:
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = int(torch.cuda.memory_allocated())
            self.kind = "cuda_max_memory_allocated"
            return
        self.baseline = current_rss()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: reset VmHWM to the current RSS
            self.kind = "cpu_peak_rss" if _status_kb("VmHWM") is not None else "cpu_peak_rss_process_lifetime"
        except OSError:
            self.kind = "cpu_peak_rss_process_lifetime"

    def sync(self) -> None:
        """Wait for queued GPU work, so that a clock read after it counts that work (no-op on a CPU)."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def read(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated())
        if self.kind == "cpu_peak_rss":
            return int(_status_kb("VmHWM")) * 1024
        return _lifetime_peak()
