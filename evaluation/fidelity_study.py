"""The product-protection study of ``docs/stylers.md``: fidelity with and without protection.

``python -m evaluation.fidelity_study --shared ../shared`` prints the report as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from evaluation.bench_stylers import shared_stylers
from ground.files import write_bytes_atomic
from ground.tensors import load_image
from stylers.effnet import EfficientNetLite0Features
from stylers.fidelity import protection_study
from stylers.protection import ProtectedStyler

log = logging.getLogger(__name__)

# six H&M products of different colours and shapes, three contrasting paintings
DEFAULT_ITEMS = (
    "0554598066", "0633130016", "0612182014", "0652361001", "0690936003", "0723049001",
)
DEFAULT_STYLES = ("starry_night", "the_scream", "mondrian")

def _rounded(x: torch.Tensor) -> list[list[float]]:
    return [[round(v, 4) for v in row] for row in x.tolist()]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evaluation.fidelity_study``: the protection study on H&M photos, as JSON."""

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--items", nargs="+", default=list(DEFAULT_ITEMS))
    parser.add_argument("--styles", nargs="+", default=list(DEFAULT_STYLES))
    parser.add_argument("--stylers", nargs="+", default=["arbitrary", "fast", "wct", "color"])
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    hm = args.shared / "data" / "hm" / "images"
    contents = torch.stack([load_image(hm / i[:3] / f"{i}.jpg") for i in args.items])
    styles = [
        load_image(args.shared / "data" / "styles" / f"{s}.jpg", 512)[None] for s in args.styles
    ]
    extractor = EfficientNetLite0Features()
    report: dict = {"items": args.items, "styles": args.styles, "strength": args.strength,
                    "protection": None, "stylers": {}}
    offs, ons = [], []
    for name, styler in shared_stylers(args.shared / "weights", args.stylers).items():
        protection = ProtectedStyler(styler, strength=args.strength)
        report["protection"] = {k: v for k, v in protection.params.items() if k != "styler"}
        result = protection_study(styler, contents, styles, args.strength, protection,
                                  extractor=extractor)
        offs.append(result["off"].flatten())
        ons.append(result["on"].flatten())
        report["stylers"][name] = {
            "off_mean": round(result["off"].mean().item(), 4),
            "on_mean": round(result["on"].mean().item(), 4),
            "off_min": round(result["off"].min().item(), 4),
            "on_min": round(result["on"].min().item(), 4),
            "on_better": int((result["on"] > result["off"]).sum()),
            "pairs": result["on"].numel(),
            "off": _rounded(result["off"]),
            "on": _rounded(result["on"]),
        }
        log.info("%s: %s", name, report["stylers"][name])
    if offs:
        off, on = torch.cat(offs), torch.cat(ons)
        report["all"] = {"off_mean": round(off.mean().item(), 4),
                         "on_mean": round(on.mean().item(), 4),
                         "on_better": int((on > off).sum()), "pairs": on.numel()}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        write_bytes_atomic(args.json, (text + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
