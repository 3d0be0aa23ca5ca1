"""Outputs of ``stylerec bench``: the terminal table, the scaling table, JSON and PNG.

All three read the JSON-ready record built by :func:`evaluation.bench.run_bench`,
so a table or plot can be redrawn from a saved ``bench.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ground.files import atomic_write, write_bytes_atomic


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: Path, record: dict[str, Any]) -> Path:
    """Write the record as indented JSON, atomically (non-finite floats become null)."""
    text = json.dumps(_finite(record), indent=1, allow_nan=False)
    return write_text(path, text + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# --------------------------------------------------------------------------- tables


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _rate(value: float, unit: str) -> str:
    if value >= 1e4:
        return f"{value / 1e3:.0f}k {unit}/s"
    if value >= 100:
        return f"{value:.0f} {unit}/s"
    return f"{value:.3g} {unit}/s"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    fmt = [f"{h:<{w}}" for h, w in zip(header, widths, strict=True)]
    out = ["  ".join(fmt).rstrip(), line]
    out += ["  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(out)


def stage_memory(record: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """``(stage, scale)`` → the stage's memory record."""
    return {(s["stage"], s["scale"]): s.get("memory") or {} for s in record["stages"]}


def measurement_rows(record: dict[str, Any]) -> list[list[str]]:
    """One table row per measurement (see :func:`format_table` for the columns)."""
    memory = stage_memory(record)
    rows = []
    for m in record["measurements"]:
        ours = m["ours"]["wall"]
        if m["kind"] == "latency":
            timing = f"p50 {ours['p50'] * 1e3:.2f} / p95 {ours['p95'] * 1e3:.2f} / " \
                     f"p99 {ours['p99'] * 1e3:.2f} ms"
        else:
            timing = f"{_duration(ours['median'])} ±{ours['spread'] * 50:.0f}%"
        bare = ""
        if m["bare"] is not None:
            theirs = m["bare"]["wall"]
            bare = (f"p50 {theirs['p50'] * 1e3:.2f} / p99 {theirs['p99'] * 1e3:.2f} ms"
                    if m["kind"] == "latency" else _duration(theirs["median"]))
        ratio = ""
        if m["ratio"] is not None:
            r = m["ratio"]
            ratio = f"{r['median']:.3f} [{r['q1']:.2f}–{r['q3']:.2f}]"
        target = ""
        if m["target"] is not None:
            t = m["target"]
            sign = "≤" if t["metric"] == "ratio" else "<"
            unit = "" if t["metric"] == "ratio" else " ms"
            verdict = "met" if t["met"] else "MISSED"
            target = f"{verdict} ({t['metric']} {sign} {t['limit']:g}{unit})"
        mem = memory.get((m["stage"], m["scale"]), {}).get("added_rss_mib")
        rows.append([
            m["stage"], m["name"], f"{m['scale']}×", timing,
            _rate(m["ours"]["per_second"], m["unit"]), bare, ratio,
            "" if mem is None else f"{mem:.0f}", target,
        ])
    return rows


def format_table(record: dict[str, Any]) -> str:
    """The per-measurement table: our median (± half the relative IQR) or latency
    percentiles, throughput, the bare median, the paired ratio with its IQR, the
    stage's peak added memory, and the target."""
    header = ["stage", "operation", "scale", "ours (median ±IQR/2 | latency)", "throughput",
              "bare", "ours/bare [IQR]", "+MiB", "target"]
    parts = [_table(header, measurement_rows(record))]
    skipped = [s for s in record["stages"] if s["status"] != "ok"]
    for s in skipped:
        parts.append(f"{s['stage']} ({s['scale']}×): {s['status']}: {s['reason']}")
    return "\n".join(parts)


def scaling_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per operation measured at several scales: median time per call (for latency
    rows, the median single call) at each scale,
    growth from the smallest to the largest scale and its exponent
    ``log(growth) / log(scale ratio)`` (1 = linear in the data), fastest-growing first."""
    groups: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for m in record["measurements"]:
        groups.setdefault((m["stage"], m["name"]), {})[m["scale"]] = m
    rows = []
    for (stage, name), by_scale in groups.items():
        if len(by_scale) < 2:
            continue
        scales = sorted(by_scale)
        lo, hi = scales[0], scales[-1]
        # latency rows: the median call (p99 is not comparable across scales, which
        # make different numbers of calls, see BenchContext.latency_calls)
        key = "p50" if by_scale[lo]["kind"] == "latency" else "median"
        medians = {s: by_scale[s]["ours"]["wall"][key] for s in scales}
        growth = medians[hi] / medians[lo]
        rows.append({
            "stage": stage, "name": name, "statistic": key, "seconds": medians,
            "per_call": {s: by_scale[s]["per_call"] for s in scales},
            "growth": growth, "exponent": math.log(growth) / math.log(hi / lo),
            "peak_added_mib": {s: stage_memory(record).get((stage, s), {}).get("added_rss_mib")
                               for s in scales},
        })
    return sorted(rows, key=lambda r: -r["exponent"])


def format_scaling(rows: list[dict[str, Any]]) -> str:
    """The scaling table: time per call at each scale, growth and exponent."""
    if not rows:
        return ""
    scales = sorted({s for r in rows for s in r["seconds"]})
    header = ["stage", "operation", *[f"{s}×" for s in scales], "growth", "exponent",
              *[f"+MiB {s}×" for s in scales]]
    table = []
    for r in rows:
        label = r["name"] if r["statistic"] == "median" else f"{r['name']} (p50)"
        mem = [r["peak_added_mib"].get(s) for s in scales]
        table.append([r["stage"], label,
                      *[_duration(r["seconds"][s]) if s in r["seconds"] else "" for s in scales],
                      f"{r['growth']:.1f}×", f"{r['exponent']:.2f}",
                      *["" if m is None else f"{m:.0f}" for m in mem]])
    return _table(header, table)


# --------------------------------------------------------------------------- plot


def plot(record: dict[str, Any], path: Path) -> Path:
    """Three panels: paired ours/bare ratios with targets; time per call against scale
    (log-log, with a linear reference); peak added memory per stage and scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    _plot_ratios(axes[0], record)
    _plot_scaling(axes[1], scaling_rows(record))
    _plot_memory(axes[2], record)
    load = record.get("load_average", {}).get("before")
    fig.suptitle(f"stylerec bench — {record['machine']['cpu_model']}, "
                 f"{record['machine']['usable_cores']} cores, load {load}")
    fig.tight_layout()

    try:
        with atomic_write(path) as handle:
            fig.savefig(handle, format="png", dpi=110)
        return path
    finally:
        plt.close(fig)


def _plot_ratios(ax: Any, record: dict[str, Any]) -> None:
    paired = [m for m in record["measurements"] if m["ratio"] is not None]
    labels = [f"{m['stage']} {m['name']} {m['scale']}×" for m in paired]
    y = list(range(len(paired)))
    med = [m["ratio"]["median"] for m in paired]
    err = [[m["ratio"]["median"] - m["ratio"]["q1"] for m in paired],
           [m["ratio"]["q3"] - m["ratio"]["median"] for m in paired]]
    ax.barh(y, med, xerr=err, color="tab:blue", alpha=0.8)
    for i, m in enumerate(paired):
        if m["target"] is not None and m["target"]["metric"] == "ratio":
            ax.plot([m["target"]["limit"]] * 2, [i - 0.4, i + 0.4], color="tab:red", lw=2)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ours / bare (median of paired runs; bar = IQR; red = target)")
    ax.set_title("overhead against the bare library")


def _plot_scaling(ax: Any, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        scales = sorted(r["seconds"])
        base = r["seconds"][scales[0]]
        ax.plot(scales, [r["seconds"][s] / base for s in scales], marker="o",
                label=f"{r['stage']} {r['name']} (×{r['growth']:.1f})")
    if rows:
        scales = sorted({s for r in rows for s in r["seconds"]})
        ax.plot(scales, [s / scales[0] for s in scales], "k--", lw=1, label="linear")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.legend(fontsize=7)
    ax.set_xlabel("data scale (replicas of the log)")
    ax.set_ylabel("time per call / time at the smallest scale")
    ax.set_title("scaling")


def _plot_memory(ax: Any, record: dict[str, Any]) -> None:
    stages = [s for s in record["stages"] if s.get("memory")]
    names = list(dict.fromkeys(s["stage"] for s in stages))
    scales = sorted({s["scale"] for s in stages})
    width = 0.8 / max(1, len(scales))
    for j, scale in enumerate(scales):
        values = {s["stage"]: s["memory"]["added_rss_mib"] for s in stages if s["scale"] == scale}
        xs = [i + j * width for i, n in enumerate(names) if n in values]
        ax.bar(xs, [values[n] for n in names if n in values], width, label=f"{scale}×")
    ax.set_xticks([i + width * (len(scales) - 1) / 2 for i in range(len(names))], names)
    ax.set_ylabel("peak RSS added during the stage (MiB)")
    ax.set_title("memory")
    if scales:
        ax.legend(fontsize=8)
