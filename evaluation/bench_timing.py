"""Measurement primitives of ``stylerec bench``: side-by-side timing, statistics, memory.

Every timed call records its wall-clock time (``time.perf_counter``) and the CPU
time of the whole process (``time.process_time``, all threads). On a shared
machine the wall clock also counts time spent waiting for a core; comparing ours
with the bare library *side by side* cancels most of that: the two are run
alternately, in ABBA order (ours first on even repeats, bare first on odd ones),
and the ratio is the median of the per-pair ratios ``ours_i / bare_i``, so a
load spike hits one pair, not one side.

Examples
--------
>>> summary = summarize([0.010, 0.012, 0.011, 0.030])
>>> summary["n"], round(summary["median"], 4)
(4, 0.0115)
>>> round(paired_ratio([2.0, 3.0, 4.0], [1.0, 2.0, 2.0])["median"], 2)
2.0
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Thunk = Callable[[], Any]


@dataclass
class Samples:
    """Per-call timings of one side of a measurement, in seconds."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    def __len__(self) -> int:
        return len(self.wall)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, percentiles and spread of a sample.

    Parameters
    ----------
    values : sequence of float
        At least one value.

    Returns
    -------
    dict
        ``n``, ``median``, ``mean``, ``min``, ``max``, ``q1``, ``q3``, ``p50``,
        ``p95``, ``p99`` (linear interpolation) and ``spread``, the interquartile
        range relative to the median (0.1 = the middle half lies within 10 %).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("cannot summarise an empty sample")
    q1, median, q3, p95, p99 = np.percentile(x, [25, 50, 75, 95, 99])
    return {
        "n": int(x.size),
        "median": float(median),
        "mean": float(x.mean()),
        "min": float(x.min()),
        "max": float(x.max()),
        "q1": float(q1),
        "q3": float(q3),
        "p50": float(median),
        "p95": float(p95),
        "p99": float(p99),
        "spread": float((q3 - q1) / median) if median > 0 else 0.0,
    }


def paired_ratio(ours: Sequence[float], bare: Sequence[float]) -> dict[str, float]:
    """Statistics of the per-pair ratios ``ours[i] / bare[i]``.

    Besides :func:`summarize`'s fields, ``of_medians`` is
    ``median(ours) / median(bare)``, a cross-check of ``median``.
    """
    if len(ours) != len(bare) or not len(ours):
        raise ValueError(f"need two samples of one non-zero length, got {len(ours)}, {len(bare)}")
    o = np.asarray(ours, dtype=np.float64)
    b = np.asarray(bare, dtype=np.float64)
    stats = summarize(o / b)
    stats["of_medians"] = float(np.median(o) / np.median(b))
    return stats


def _timed(fn: Thunk, sync: Callable[[], None] | None) -> tuple[float, float]:
    if sync is not None:
        sync()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - wall0, time.process_time() - cpu0


def measure(fn: Thunk, repeats: int, warmup: int = 1,
            sync: Callable[[], None] | None = None) -> Samples:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before and after each timed
    call, so asynchronous device work is counted.
    """
    for _ in range(warmup):
        fn()
    gc.collect()
    out = Samples()
    for _ in range(repeats):
        out.add(*_timed(fn, sync))
    return out


def side_by_side(ours: Thunk, bare: Thunk, repeats: int, warmup: int = 1,
                 sync: Callable[[], None] | None = None) -> tuple[Samples, Samples]:
    """Time ours and the bare library alternately, ABBA order, after warm-ups of each."""
    for _ in range(warmup):
        ours()
        bare()
    gc.collect()
    mine, theirs = Samples(), Samples()
    for i in range(repeats):
        order = ((ours, mine), (bare, theirs)) if i % 2 == 0 else ((bare, theirs), (ours, mine))
        for fn, sink in order:
            sink.add(*_timed(fn, sync))
    return mine, theirs


def latencies(fn: Callable[[Any], Any], inputs: Iterable[Any], warmup: int = 5,
              sync: Callable[[], None] | None = None) -> Samples:
    """Per-call latency of ``fn(x)`` for each ``x`` in ``inputs`` (after ``warmup`` calls)."""
    inputs = list(inputs)
    for x in inputs[:warmup]:
        fn(x)
    gc.collect()
    out = Samples()
    for x in inputs:
        out.add(*_timed(lambda x=x: fn(x), sync))
    return out


def side_by_side_latencies(
    ours: Callable[[Any], Any], bare: Callable[[Any], Any], inputs: Iterable[Any],
    warmup: int = 5, sync: Callable[[], None] | None = None,
) -> tuple[Samples, Samples]:
    """Per-call latencies of ours and bare on the same inputs, alternating who goes first."""
    inputs = list(inputs)
    for x in inputs[:warmup]:
        ours(x)
        bare(x)
    gc.collect()
    mine, theirs = Samples(), Samples()
    for i, x in enumerate(inputs):
        order = ((ours, mine), (bare, theirs)) if i % 2 == 0 else ((bare, theirs), (ours, mine))
        for fn, sink in order:
            sink.add(*_timed(lambda fn=fn, x=x: fn(x), sync))
    return mine, theirs


# --------------------------------------------------------------------------- memory


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak resident memory of the process during a ``with`` block, in MiB.

    On Linux the kernel's high-water mark (``VmHWM``) is reset on entry by
    writing ``5`` to ``/proc/self/clear_refs``, so :attr:`peak_mib` is the peak
    *within* the block and :attr:`added_mib` the peak minus the resident size at
    entry. Where the reset is impossible, ``getrusage``'s lifetime peak is used
    and :attr:`method` says so.

    Examples
    --------
    >>> with PeakMemory() as mem:
    ...     block = b"x" * (50 << 20)
    >>> mem.added_mib > 40 or mem.method != "VmHWM"
    True
    """

    def __enter__(self) -> PeakMemory:
        self.method = "VmHWM"
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.method = "ru_maxrss (process lifetime, not reset per stage)"
        self.start_mib = (_status_kib("VmRSS") or _ru_maxrss_kib()) / 1024
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = _status_kib("VmHWM") if self.method == "VmHWM" else None
        self.peak_mib = (hwm if hwm is not None else _ru_maxrss_kib()) / 1024
        self.added_mib = max(0.0, self.peak_mib - self.start_mib)

    def as_dict(self) -> dict[str, Any]:
        return {"peak_rss_mib": round(self.peak_mib, 1), "added_rss_mib": round(self.added_mib, 1),
                "rss_at_start_mib": round(self.start_mib, 1), "method": self.method}


def _ru_maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, RAM, OS, Python, and the load average at call time."""
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": _ram_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    info["load_average"] = load_average()
    return info


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (``uptime``), None where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)


def blas_info() -> list[dict[str, Any]]:
    """The native thread pools loaded so far (BLAS, OpenMP): library, version, threads."""
    from threadpoolctl import threadpool_info

    keys = ("user_api", "internal_api", "version", "num_threads", "threading_layer")
    return [{k: pool.get(k) for k in keys} for pool in threadpool_info()]


# --------------------------------------------------------------------------- results


@dataclass
class Target:
    """A figure the benchmark must show: ``metric`` of a measurement at most ``limit``.

    ``metric`` is ``"ratio"`` (median paired ours/bare wall-time ratio) or
    ``"p99_ms"`` / ``"p50_ms"`` (our per-call latency percentile in milliseconds).
    """

    metric: str
    limit: float

    def value(self, record: dict[str, Any]) -> float | None:
        if self.metric == "ratio":
            return None if record["ratio"] is None else record["ratio"]["median"]
        percentile = self.metric.removesuffix("_ms")
        return record["ours"]["wall"][percentile] * 1e3


@dataclass
class Measurement:
    """One timed operation at one scale: our samples, the bare library's, and the ratio.

    Parameters
    ----------
    stage, name : str
        Stage (``"cf"``) and operation (``"fit"``).
    scale : int
        Data replication factor.
    kind : {"throughput", "latency"}
        Throughput: a few long calls, reported as ``unit``/s. Latency: many short
        calls, reported as p50/p95/p99.
    unit : str
        What one call processes (``"users"``, ``"images"``, ``"iterations"``).
    per_call : float
        How many ``unit`` one call processes.
    ours, bare : Samples
        Per-call timings; ``bare`` is None when there is no bare counterpart.
        When both are given they are paired: ``ours.wall[i]`` and ``bare.wall[i]``
        were measured side by side.
    bare_label : str
        What the bare side runs.
    params : dict
        Sizes and settings of this measurement.
    target : Target, optional
        The figure this measurement must meet.
    """

    stage: str
    name: str
    scale: int
    kind: str
    unit: str
    per_call: float
    ours: Samples
    bare: Samples | None = None
    bare_label: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    target: Target | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: summaries, raw samples, paired ratios, throughput, target."""
        out: dict[str, Any] = {
            "stage": self.stage, "name": self.name, "scale": self.scale, "kind": self.kind,
            "unit": self.unit, "per_call": self.per_call, "params": self.params,
            "ours": _side(self.ours, self.per_call),
            "bare": None if self.bare is None else _side(self.bare, self.per_call),
            "bare_label": self.bare_label or None,
            "ratio": None, "ratio_cpu": None, "target": None,
        }
        if self.bare is not None:
            out["ratio"] = paired_ratio(self.ours.wall, self.bare.wall)
            out["ratio_cpu"] = paired_ratio(self.ours.cpu, self.bare.cpu)
        if self.target is not None:
            value = self.target.value(out)
            met = value is not None and value <= self.target.limit
            out["target"] = {"metric": self.target.metric, "limit": self.target.limit,
                             "value": value, "met": met}
        return out


def _side(samples: Samples, per_call: float) -> dict[str, Any]:
    wall = summarize(samples.wall)
    return {
        "wall": wall,
        "cpu": summarize(samples.cpu),
        "per_second": per_call / wall["median"] if wall["median"] > 0 else float("inf"),
        "samples": {"wall": list(samples.wall), "cpu": list(samples.cpu)},
    }
