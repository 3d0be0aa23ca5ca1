"""Build the small demo data set in ``data/`` from ``../shared/data``.

Picks a seeded sample of H&M customers with 5–25 distinct purchases, keeps all
their purchases, downsizes the photos of the articles involved, and copies a few
public-domain style references. Re-running with the same seed rebuilds the same
files.

    python scripts/build_demo_data.py --shared ../shared --out data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

STYLES = ("starry_night", "the_scream", "wave", "composition_vii", "mondrian", "udnie")
IMAGE_SIZE = (128, 192)  # H&M photos are 2:3 portrait
STYLE_SIDE = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    hm = args.shared / "data" / "hm"
    tx = pd.read_csv(hm / "transactions.csv", dtype={"article_id": str, "customer_id": str})
    distinct = tx.groupby("customer_id")["article_id"].nunique()
    eligible = np.sort(distinct[(distinct >= 5) & (distinct <= 25)].index.to_numpy())
    rng = np.random.default_rng(args.seed)
    chosen = set(rng.choice(eligible, size=min(args.customers, len(eligible)), replace=False))
    sample = tx[tx["customer_id"].isin(chosen)].reset_index(drop=True)

    out = args.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    sample.to_csv(out / "transactions.csv", index=False)
    for article in sorted(sample["article_id"].unique()):
        dst = out / "images" / article[:3] / f"{article}.jpg"
        dst.parent.mkdir(exist_ok=True)
        with Image.open(hm / "images" / article[:3] / f"{article}.jpg") as im:
            im.convert("RGB").resize(IMAGE_SIZE, Image.LANCZOS).save(
                dst, "JPEG", quality=80, optimize=True
            )
    articles = pd.read_csv(hm / "articles.csv", dtype={"article_id": str})
    articles[articles["article_id"].isin(sample["article_id"])].to_csv(
        out / "articles.csv", index=False
    )

    (out / "styles").mkdir(exist_ok=True)
    for name in STYLES:
        with Image.open(args.shared / "data" / "styles" / f"{name}.jpg") as im:
            im = im.convert("RGB")
            im.thumbnail((STYLE_SIDE, STYLE_SIDE), Image.LANCZOS)
            im.save(out / "styles" / f"{name}.jpg", "JPEG", quality=88, optimize=True)
    print(
        f"{len(chosen)} customers, {len(sample)} purchases, "
        f"{sample['article_id'].nunique()} articles, {len(STYLES)} styles -> {out}"
    )


if __name__ == "__main__":
    main()
