"""Evaluation records: a JSON file that says exactly what was measured, and an HTML page.

The JSON record holds everything needed to trust or reproduce a number: a
fingerprint of the input data (SHA-256 and size of each file, row and event
counts), the split and its parameters, the protocol, each model's parameters
(after tuning) and metrics with bootstrap intervals, and the versions of the
libraries that produced them. The HTML page shows the same with plots (metric
vs k, per-user distribution, a parameter sweep such as the blend weight) and,
when render paths are given, a small gallery of renders next to the originals.

Every file is written atomically (a temporary file in the same directory, then
``os.replace``), so a reader never sees half a report.

Examples
--------
>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> path = write_json({"name": "demo", "models": []}, folder / "record.json")
>>> json.loads(path.read_text())["name"]
'demo'
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import importlib
import io
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ground.files import file_sha256, write_bytes_atomic

FORMAT_VERSION = 1
TRACKED_PACKAGES = ("stylerec", "implicit", "numpy", "scipy", "pandas", "torch", "faiss-cpu",
                    "matplotlib")



def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """NaN/inf become null: JSON has no NaN, and readers choke on the extension."""
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(record: Mapping[str, Any], path: str | Path) -> Path:
    """Write a record as indented JSON, atomically; NaN becomes ``null``."""
    text = json.dumps(_finite(dict(record)), indent=2, default=_json_default, allow_nan=False)
    return write_bytes_atomic(path, (text + "\n").encode())


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """SHA-256 and size of a file.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "f.txt"
    >>> _ = p.write_text("abc")
    >>> file_fingerprint(p)["sha256"][:12]
    'ba7816bf8f01'
    """
    path = Path(path)
    return {"path": str(path), "sha256": file_sha256(path), "bytes": path.stat().st_size}


def library_versions(packages: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of the libraries that shape the numbers (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def source_fingerprint(packages: Iterable[str] = ("recsys", "stylers", "evaluation")
                       ) -> dict[str, Any]:
    """SHA-256 over the Python sources of the stylerec packages, and the git commit.

    The version number does not change while a checkout is being edited; this
    does, so two records with different numbers can be told apart by code.
    """
    digest = hashlib.sha256()
    root = None
    for name in packages:
        package = Path(importlib.import_module(name).__file__).parent
        root = package.parent
        for path in sorted(package.rglob("*.py")):
            digest.update(f"{name}/{path.relative_to(package)}".encode())
            digest.update(path.read_bytes())
    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout (an installed wheel): the source hash still identifies it
    return {"sources_sha256": digest.hexdigest(), "git_commit": commit}


def environment() -> dict[str, Any]:
    """Versions, platform and thread settings (BLAS threads change timings, not results)."""
    return {
        "versions": library_versions(),
        "code": source_fingerprint(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "cpu_count": os.cpu_count(),
        "threads": {k: os.environ.get(k) for k in
                    ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }


# -- plots -------------------------------------------------------------------


def _figure_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _split_metric(name: str) -> tuple[str, int | None]:
    base, _, k = name.partition("@")
    return base, int(k) if k.isdigit() else None


def plot_metric_vs_k(models: Sequence[Mapping[str, Any]]) -> bytes | None:
    """PNG: every @k metric against k, one line per model, bootstrap intervals as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bases = sorted({_split_metric(m)[0] for model in models for m in model["metrics"]
                    if _split_metric(m)[1] is not None})
    if not bases:
        return None
    cols = min(3, len(bases))
    rows = math.ceil(len(bases) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False,
                             constrained_layout=True)
    for ax, base in zip(axes.ravel(), bases, strict=False):
        for model in models:
            points = sorted((k, v) for name, v in model["metrics"].items()
                            for b, k in [_split_metric(name)] if b == base and k is not None)
            if not points:
                continue
            ks = [k for k, _ in points]
            mean = np.array([v["mean"] for _, v in points], dtype=float)
            low = np.array([_nan(v.get("ci_low")) for _, v in points])
            high = np.array([_nan(v.get("ci_high")) for _, v in points])
            yerr = None if np.isnan(low).all() else np.vstack([mean - low, high - mean])
            ax.errorbar(ks, mean, yerr=yerr, marker="o", capsize=3, label=model["name"])
        ax.set_title(base)
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(bases):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=8)
    fig.suptitle("metric vs cut-off (95% bootstrap intervals)")
    return _figure_png(fig)


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def plot_distribution(
    per_user: Mapping[str, Mapping[str, np.ndarray]], metric: str
) -> bytes | None:
    """PNG: the per-user distribution of one metric, one box per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {name: np.asarray(v[metric], dtype=float) for name, v in per_user.items()
            if metric in v}
    data = {name: v[~np.isnan(v)] for name, v in data.items()}
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(data) + 2), 3.4))
    ax.boxplot(list(data.values()), showmeans=True)
    ax.set_xticks(range(1, len(data) + 1), list(data.keys()), rotation=20)
    ax.set_ylabel(metric)
    ax.set_title(f"per-user {metric} (triangle: mean)")
    ax.grid(alpha=0.3, axis="y")
    return _figure_png(fig)


def plot_sweep(sweep: Mapping[str, Any], model_name: str) -> bytes | None:
    """PNG: metrics against a swept parameter (e.g. the blend weight), with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sweep.get("points", [])
    if not points:
        return None
    metrics = list(points[0]["metrics"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [p["value"] for p in points]
    for metric in metrics:
        mean = np.array([p["metrics"][metric]["mean"] for p in points], dtype=float)
        low = np.array([_nan(p["metrics"][metric].get("ci_low")) for p in points])
        high = np.array([_nan(p["metrics"][metric].get("ci_high")) for p in points])
        ax.plot(xs, mean, marker="o", label=metric)
        if not np.isnan(low).all():
            ax.fill_between(xs, low, high, alpha=0.15)
    ax.set_xlabel(sweep["param"])
    ax.set_title(f"{model_name}: sweep of {sweep['param']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _figure_png(fig)


# -- HTML --------------------------------------------------------------------


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _thumbnail(path: str | Path, size: int = 160) -> str:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
    except OSError as err:
        return f"<em>unreadable: {html.escape(str(err))}</em>"
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(str(path))}" src="data:image/jpeg;base64,{data}">'


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _metrics_table(models: Sequence[Mapping[str, Any]]) -> str:
    names: list[str] = []
    for model in models:
        names += [m for m in model["metrics"] if m not in names]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for model in models:
        cells = []
        for n in names:
            v = model["metrics"].get(n)
            if v is None:
                cells.append("<td>–</td>")
                continue
            ci = ("" if v.get("ci_low") is None or math.isnan(_nan(v.get("ci_low")))
                  else f"<br><small>[{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]</small>")
            cells.append(f"<td>{_fmt(v['mean'])}{ci}</td>")
        rows.append(f"<tr><th>{html.escape(model['name'])}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>model</th>{head}</tr>{''.join(rows)}</table>"


def _comparison_table(models: Sequence[Mapping[str, Any]], baseline: str = "") -> str:
    rows = []
    for model in models:
        for metric, d in (model.get("vs_baseline") or {}).items():
            rows.append(
                f"<tr><td>{html.escape(model['name'])}</td><td>{html.escape(metric)}</td>"
                f"<td>{_fmt(d['diff'])}</td><td>[{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}]</td>"
                f"<td>{_fmt(d['p_le_zero'])}</td></tr>")
    if not rows:
        return ""
    return (f"<h2>Paired comparison with the baseline {html.escape(baseline)}</h2>"
            "<table><tr><th>model</th>"
            "<th>metric</th><th>mean difference</th><th>95% interval</th>"
            "<th>share of resamples &le; 0</th></tr>" + "".join(rows) + "</table>")


AUDIT_MUST_BE_ZERO = ("cut_time_groups", "test_only_candidates")


def audit_lines(audit: Mapping[str, Any] | None) -> list[str]:
    """The leak audit as short text lines (for the printed table and the HTML page)."""
    if not audit:
        return ["leak audit: none recorded"]
    after = audit.get("train_events_after_test_start")
    share = audit.get("cold_positive_share")
    random = audit.get("split_order") == "random"

    def flag(key: str) -> str:
        if audit.get(key) == 0:
            return ""
        if key == "cut_time_groups" and random:
            return " (a random split: this published protocol ignores time)"
        return " (MUST BE 0)"

    lines = [
        "leak audit: " + ", ".join(f"{k}={audit.get(k)}{flag(k)}" for k in AUDIT_MUST_BE_ZERO)
        + ", train_events_after_test_start="
        + ("-" if after is None else f"{after:.1%}")
        + f", time_resolution={audit.get('time_resolution')}",
        f"test positives: {audit.get('test_positives')}, cold (no training event): "
        f"{audit.get('cold_positives')}" + ("" if share is None else f" ({share:.1%})")
        + "; reachable via " + (", ".join(f"{k}: {v}" for k, v in
                                          audit.get("cold_positive_reach", {}).items()) or "-"),
    ]
    if audit.get("cold_recall"):
        lines.append(f"cold recall: {audit['cold_recall']}")
    return lines


def _audit_html(audit: Mapping[str, Any] | None) -> str:
    bad = audit and (audit.get("test_only_candidates") or (
        audit.get("cut_time_groups") and audit.get("split_order") != "random"))
    colour = "#b00" if bad else "#070"
    return (f"<div style='border:2px solid {colour};padding:0.5em 1em'><h2>Leak audit</h2>"
            + "".join(f"<p>{html.escape(line)}</p>" for line in audit_lines(audit))
            + "</div>")


def _gallery(entries: Sequence[Mapping[str, Any]]) -> str:
    cards = []
    for e in entries:
        caption = " ".join(f"{html.escape(k)}={_fmt(e[k])}" for k in
                           ("user_id", "item_id", "style", "lift", "fidelity") if k in e)
        original = _thumbnail(e["original"]) if e.get("original") else ""
        cards.append(f'<figure>{original}{_thumbnail(e["render"])}'
                     f"<figcaption>{caption}</figcaption></figure>")
    return "<h2>Render gallery</h2><p>original, then render</p><div class='gallery'>" + \
        "".join(cards) + "</div>"


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child{text-align:left}small{color:#666}pre{background:#f6f6f6;padding:1em;
overflow:auto;font-size:12px}.gallery{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;border:1px solid #ddd;padding:4px}figcaption{font-size:11px;max-width:330px}"""


def render_html(
    record: Mapping[str, Any],
    per_user: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    gallery: Sequence[Mapping[str, Any]] | None = None,
    distribution_metric: str | None = None,
) -> str:
    """The HTML page of a record (plots embedded as PNG, so it is one file).

    Parameters
    ----------
    record : mapping
        As built by :func:`evaluation.runner.run`.
    per_user : mapping, optional
        ``{model name: {metric: per-user values}}`` for the distribution plot.
    gallery : sequence of mapping, optional
        Entries with ``render`` (path) and optionally ``original``, ``user_id``,
        ``item_id``, ``style``, ``lift``, ``fidelity``.
    distribution_metric : str, optional
        Metric of the distribution plot (default: the record's headline metric).
    """
    models = [m for m in record.get("models", []) if "metrics" in m]
    skipped = [m for m in record.get("models", []) if "skipped" in m]
    parts = [f"<h1>Evaluation: {html.escape(str(record.get('name', '')))}</h1>",
             _audit_html(record.get("audit"))]
    data = record.get("data", {})
    split = record.get("split", {})
    parts.append(
        f"<p>{_fmt(data.get('events'))} events, {_fmt(data.get('users'))} users, "
        f"{_fmt(data.get('items'))} items. Split <b>{html.escape(str(split.get('method')))}"
        f"</b> {html.escape(json.dumps(split.get('params', {})))}. Created "
        f"{html.escape(str(record.get('created', '')))}.</p>")
    if record.get("tuning_protocol"):
        parts.append(f"<p>Tuning: {html.escape(record['tuning_protocol'])}.</p>")
    unit = "(user, window) pairs, users resampled" if split.get("method") == "rolling" \
        else "evaluated users"
    parts.append(f"<h2>Metrics (mean over {unit}; 95% bootstrap interval)</h2>")
    parts.append(_metrics_table(models))
    if skipped:
        parts.append("<p>Not evaluated: " + "; ".join(
            f"<b>{html.escape(m['name'])}</b> ({html.escape(str(m['skipped']))})"
            for m in skipped) + "</p>")
    parts.append(_comparison_table(models, str(record.get("baseline", ""))))
    png = plot_metric_vs_k(models)
    if png:
        parts.append("<h2>Metric vs k</h2>" + _img(png, "metric vs k"))
    metric = distribution_metric or record.get("headline_metric")
    if per_user and metric:
        png = plot_distribution(per_user, metric)
        if png:
            parts.append("<h2>Per-user distribution</h2>" + _img(png, "distribution"))
    for model in models:
        if model.get("sweep"):
            png = plot_sweep(model["sweep"], model["name"])
            if png:
                parts.append(f"<h2>Sweep: {html.escape(model['name'])}</h2>" + _img(png, "sweep"))
    if gallery:
        parts.append(_gallery(gallery))
    summary = {k: record[k] for k in ("audit", "data", "split", "protocol", "catalog",
                                      "environment") if k in record}
    parts.append("<h2>Provenance</h2><pre>" +
                 html.escape(json.dumps(_finite(summary), indent=2, default=_json_default)) +
                 "</pre>")
    tuned = [m for m in models if m.get("tuning")]
    for model in tuned:
        t = model["tuning"]
        rows = "".join(
            f"<tr><td>{html.escape(json.dumps(tr['params']))}</td>"
            f"<td>{_fmt(tr['metrics'].get(t['metric']))}</td><td>{_fmt(tr['fit_s'])}</td></tr>"
            for tr in t["trials"])
        parts.append(f"<h2>Tuning: {html.escape(model['name'])} (validation "
                     f"{html.escape(t['metric'])})</h2><table><tr><th>params</th>"
                     f"<th>{html.escape(t['metric'])}</th><th>fit s</th></tr>{rows}</table>")
    body = "\n".join(p for p in parts if p)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>stylerec evaluation"
            f"</title><style>{CSS}</style></head><body>{body}</body></html>")


def write_html(record: Mapping[str, Any], path: str | Path, **kwargs: Any) -> Path:
    """Render :func:`render_html` and write it atomically."""
    return write_bytes_atomic(path, render_html(record, **kwargs).encode())


def write_per_user_csv(
    per_user: Mapping[str, Mapping[str, np.ndarray]],
    user_ids: Mapping[str, np.ndarray],
    path: str | Path,
) -> Path:
    """Long CSV ``model,user_id,metric,value`` of every per-user value, atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", "user_id", "metric", "value"])
    for model, metrics in per_user.items():
        users = user_ids[model]
        for metric, values in metrics.items():
            writer.writerows([model, u, metric, f"{v:.6g}"]
                             for u, v in zip(users, values, strict=True))
    return write_bytes_atomic(path, buf.getvalue().encode())
