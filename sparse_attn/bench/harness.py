"""Measurement primitives of ``sparse-attn bench``: timing, peak memory, machine facts.

Everything here is implementation-agnostic: a benchmark cell hands over a zero-argument
callable, the harness warms it up, times repeated calls with :func:`time.perf_counter`
(wall clock, milliseconds) and watches the process' resident memory.

Peak memory: Linux keeps the high-water mark of the resident set size (``VmHWM`` in
``/proc/self/status``); writing ``5`` to ``/proc/self/clear_refs`` resets it to the
current RSS. :class:`PeakRSS` resets it (after ``malloc_trim``) before a cell and reads it
after, so a cell's figure is *the peak resident memory of the whole process during the
cell, minus the resident memory at its start*, in MiB. It covers every allocator (PyTorch,
ONNX Runtime, NumPy) alike; memory an allocator kept resident from an earlier cell and
reused is not counted, so it is a lower bound of what the cell needs on its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path


class NotAvailable(Exception):
    """A benchmark cell that cannot run here; ``str(exc)`` is the reason shown as ``n/a (...)``."""


# ---------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Wall-clock statistics of repeated calls, in milliseconds.

    Attributes:
        median_ms, q1_ms, q3_ms, min_ms, max_ms: statistics over the timed repeats.
        repeats: number of timed calls; warmup: untimed calls before them (the first one
            included, whose time is ``first_call_ms``: it contains compilation, if any).
        times_ms: every timed call.
        cpu_median_ms: median CPU time of this process per timed call (all threads,
            ``time.process_time``): about threads x wall time when the cores are not shared.
    """

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    warmup: int
    first_call_ms: float
    times_ms: list[float] = field(default_factory=list)
    cpu_median_ms: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _quantile(xs: list[float], q: float) -> float:
    """Linear-interpolation quantile of ``xs`` (sorted or not), ``0 <= q <= 1``."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def time_callable(
    fn: Callable[[], object],
    *,
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 20,
    budget_s: float = 2.0,
    slow_call_s: float = 30.0,
) -> tuple[Timing, object]:
    """Warm up and time ``fn()``; returns the statistics and the first call's result.

    The number of timed repeats adapts to the cost of a call: ``ceil(budget_s / t)`` where
    ``t`` is the last warm-up time, clamped to ``[min_repeats, max_repeats]``.

    Args:
        fn: zero-argument callable running one complete forward of the cell.
        warmup: untimed calls before timing (>= 1; the first compiles lazily-compiled code).
        min_repeats, max_repeats: bounds of the number of timed calls (>= 1).
        budget_s: wall-clock seconds the timed calls should take in total.
        slow_call_s: when the first call takes longer than this, no further warm-up is
            done and a single timed call is made (the cell would otherwise take minutes).

    Raises:
        ValueError: on ``warmup < 1`` or ``min_repeats < 1`` or ``max_repeats < min_repeats``.
    """
    if warmup < 1 or min_repeats < 1 or max_repeats < min_repeats:
        raise ValueError(
            f"need warmup >= 1 and 1 <= min_repeats <= max_repeats, got warmup={warmup}, "
            f"min_repeats={min_repeats}, max_repeats={max_repeats}"
        )
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    last = first
    if first > slow_call_s:
        warmup, min_repeats, max_repeats = 1, 1, 1
    for _ in range(warmup - 1):
        t0 = time.perf_counter()
        fn()
        last = time.perf_counter() - t0
    n = int(min(max_repeats, max(min_repeats, math.ceil(budget_s / max(last, 1e-6)))))
    times = []
    cpu = []
    for _ in range(n):
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return (
        Timing(
            median_ms=statistics.median(times),
            q1_ms=_quantile(times, 0.25),
            q3_ms=_quantile(times, 0.75),
            min_ms=min(times),
            max_ms=max(times),
            repeats=n,
            warmup=warmup,
            first_call_ms=first * 1e3,
            times_ms=[round(t, 4) for t in times],
            cpu_median_ms=statistics.median(cpu),
        ),
        result,
    )


# ---------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def status_mib(key: str) -> float | None:
    """A ``/proc/self/status`` size (``"VmRSS"``, ``"VmHWM"``) in MiB, or None where
    unreadable."""
    kib = _status_kib(key)
    return None if kib is None else kib / 1024.0


def mem_available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes, or None where unreadable."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Context manager measuring the peak RSS increase of this process, in MiB.

    ``peak_mib`` is None when the platform does not allow resetting the high-water mark
    (non-Linux, or ``/proc/self/clear_refs`` not writable); ``method`` says which.
    """

    method = "VmHWM after /proc/self/clear_refs reset, minus VmRSS at start (MiB)"

    def __init__(self) -> None:
        self.peak_mib: float | None = None
        self._base: int | None = None

    def __enter__(self) -> PeakRSS:
        _malloc_trim()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self._base = None
            return self
        self._base = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self._base is None:
            return
        hwm = _status_kib("VmHWM")
        if hwm is not None:
            self.peak_mib = max(0.0, (hwm - self._base) / 1024.0)


# ---------------------------------------------------------------------------- machine
def machine_info() -> dict:
    """Facts about the machine and software that a timing depends on (JSON-serialisable)."""
    info: dict = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "mem_available_gib": round((mem_available_bytes() or 0) / 2**30, 2),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    info["cpu_isa"] = cpu_isa()
    for mod in ("torch", "onnx", "onnxruntime", "numpy"):
        try:
            info[f"{mod}_version"] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent package is a fact, not an error
            info[f"{mod}_version"] = None
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    return info


#: ``/proc/cpuinfo`` flags that decide which kernels a CPU can run fast.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def cpu_isa() -> dict:
    """The CPU's vector instruction sets and the one our compiled kernel dispatches to.

    Returns:
        dict with ``flags`` (those of :data:`ISA_FLAGS` that ``/proc/cpuinfo`` lists),
        ``summary`` (``"AMX"`` / ``"AVX-512"`` / ``"AVX2"`` / ``"none"``: the widest of
        AVX2, AVX-512 and AMX present) and ``kernel`` (``sparse_attn.kernels.cpu_ext.isa()``,
        or ``"unavailable: <reason>"`` where the extension cannot be built or loaded).
    """
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    present = [f for f in ISA_FLAGS if f in flags]
    summary = (
        "AMX"
        if "amx_tile" in flags
        else "AVX-512"
        if "avx512f" in flags
        else "AVX2"
        if "avx2" in flags
        else "none"
    )
    try:
        from sparse_attn.kernels import cpu_ext

        kernel = cpu_ext.isa()
    except Exception as exc:  # noqa: BLE001 - an absent extension is a fact, not an error
        kernel = f"unavailable: {' '.join(str(exc).split())[:160]}"
    return {"flags": present, "summary": summary, "kernel": kernel}


def gemm_ceiling(n: int = 2048, repeats: int = 5) -> dict:
    """Measured fp32 matrix-multiply rate of this machine: ``torch.mm`` of two ``[n, n]``.

    Returns:
        dict with ``n``, ``median_ms``, ``gflops`` (``2 n^3 / median``, 1e9 flop/s),
        ``cpu_median_ms``, ``gflops_cpu`` (``2 n^3 / (CPU time / threads)``: the rate with
        the cores to itself, assuming perfect scaling; meaningful on a shared machine) and
        ``threads`` (``torch.get_num_threads()``).
    """
    import torch

    a = torch.randn(n, n, dtype=torch.float32)
    b = torch.randn(n, n, dtype=torch.float32)
    timing, _ = time_callable(
        lambda: torch.mm(a, b), warmup=2, min_repeats=repeats, max_repeats=repeats
    )
    threads = torch.get_num_threads()
    cpu_equiv = (timing.cpu_median_ms or 0.0) / threads
    return {
        "n": n,
        "median_ms": timing.median_ms,
        "gflops": 2.0 * n**3 / (timing.median_ms * 1e-3) / 1e9,
        "cpu_median_ms": timing.cpu_median_ms,
        "gflops_cpu": 2.0 * n**3 / (cpu_equiv * 1e-3) / 1e9 if cpu_equiv > 0 else None,
        "threads": threads,
    }
