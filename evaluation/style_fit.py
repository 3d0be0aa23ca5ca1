"""Does the matched style fit the shopper? Four checks with judges the matcher did not use.

The matcher (:mod:`recsys.aesthetic`) sees soft Lab histograms of the product
region, texture statistics and Magenta style vectors. It is judged by:

colour agreement
    the matched style's percentile among the library (0 = the best-fitting
    reference, 1 = the worst; a random choice averages 0.5) under two judges it
    does not use: (a) **labels**: H&M's ``colour_group_name`` of the purchased
    articles, mapped to reference sRGB colours (:data:`COLOUR_GROUP_RGB`), against
    each reference's palette; (b) **k-means palettes**: 5 dominant colours (k-means
    in Lab, scikit-learn) of a fixed central crop of each product photo (no
    foreground mask, no histogram) and of the whole artwork. Both measure a
    palette distance in CIEDE2000 (``skimage.color.deltaE_ciede2000``): the mean,
    over the shopper's colours weighted by share, of the distance to the nearest
    colour of the reference's palette.
stability
    the style matched from the older half of a shopper's history (split between
    whole days) equals the one from the newer half, against chance (the agreement
    of independent draws from the two halves' style distributions); for personal
    mixes, the distance between the two halves' mixed style vectors against random
    pairs of shoppers.
discrimination
    normalised entropy of the matched styles over shoppers, and the largest
    reference's share against its fair share ``1 / n_styles``.
behaviour (H&M)
    on held-out windows of whole days, the share of a shopper's window purchases
    among the articles "near" their matched style (the ``near_fraction`` of the
    declared catalog, all articles with a colour label, closest to the style's
    palette by the label judge) against the average over all references (a
    random style): the lift, with a bootstrap interval over shoppers.

A reference point (:func:`judge_as_matcher`): the same checks with the label judge as
the matcher, i.e. what matching on the colour labels alone reaches on these shoppers.

Examples
--------
>>> lab = np.array([[50.0, 0.0, 0.0], [50.0, 40.0, 0.0]])
>>> round(palette_distance(lab[:1], np.array([1.0]), lab), 3)
0.0
>>> percentiles(np.array([[3.0, 1.0, 2.0]]), np.array([2]))
array([0.5])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from evaluation.metrics import bootstrap_ci

# reference sRGB of H&M colour groups ("Other X" takes X's; no colour for Other/Unknown)
COLOUR_GROUP_RGB = {
    "Black": (20, 20, 20), "White": (250, 250, 250), "Off White": (240, 235, 220),
    "Dark Blue": (25, 35, 80), "Blue": (40, 80, 170), "Light Blue": (150, 185, 220),
    "Other Blue": (40, 80, 170), "Light Beige": (230, 215, 190), "Beige": (205, 185, 150),
    "Dark Beige": (165, 140, 105), "Greyish Beige": (175, 165, 145),
    "Light Pink": (245, 200, 210), "Pink": (235, 130, 165), "Dark Pink": (190, 60, 110),
    "Other Pink": (235, 130, 165), "Grey": (128, 128, 128), "Light Grey": (200, 200, 200),
    "Dark Grey": (70, 70, 70), "Greenish Khaki": (120, 120, 80), "Dark Green": (30, 70, 40),
    "Green": (50, 140, 60), "Light Green": (160, 210, 150), "Other Green": (50, 140, 60),
    "Dark Red": (120, 20, 35), "Red": (200, 30, 40), "Light Red": (235, 110, 110),
    "Other Red": (200, 30, 40), "Yellowish Brown": (150, 105, 50), "Yellow": (240, 210, 50),
    "Light Yellow": (250, 240, 160), "Dark Yellow": (200, 160, 30),
    "Other Yellow": (240, 210, 50), "Light Orange": (250, 180, 120), "Orange": (240, 130, 40),
    "Dark Orange": (200, 90, 30), "Other Orange": (240, 130, 40), "Gold": (210, 175, 60),
    "Silver": (190, 190, 195), "Bronze/Copper": (180, 115, 60),
    "Light Purple": (200, 170, 220), "Purple": (120, 60, 150), "Dark Purple": (70, 30, 90),
    "Other Purple": (120, 60, 150), "Turquoise": (40, 180, 180),
    "Light Turquoise": (150, 220, 215), "Dark Turquoise": (20, 110, 115),
    "Other Turquoise": (40, 180, 180),
}


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(rgb, np.float64).reshape(-1, 1, 3) / 255.0).reshape(-1, 3)


def label_lab(names: Sequence[str]) -> np.ndarray:
    """Lab colours ``[n, 3]`` of colour-group names (NaN rows for names without a colour)."""
    rgb = np.array([COLOUR_GROUP_RGB.get(str(n), (np.nan,) * 3) for n in names], np.float64)
    out = np.full((len(rgb), 3), np.nan)
    ok = ~np.isnan(rgb).any(1)
    if ok.any():
        out[ok] = _rgb_to_lab(rgb[ok])
    return out


def kmeans_palette(path: str | Path, k: int = 5, product: bool = True,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The judge's palette: ``k`` Lab colours and their pixel shares.

    Products: the central 60% × 80% of the photo (a fixed crop, no mask); artworks
    (``product=False``): the whole image. Pixels at 64 px width, k-means in Lab.
    """
    from skimage.color import rgb2lab
    from sklearn.cluster import KMeans

    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        if product:
            img = img.crop((int(0.2 * w), int(0.1 * h), int(0.8 * w), int(0.9 * h)))
        img = img.resize((64, max(1, round(64 * img.height / img.width))), Image.BILINEAR)
    lab = rgb2lab(np.asarray(img, np.float64) / 255.0).reshape(-1, 3)
    km = KMeans(n_clusters=k, n_init=2, random_state=seed).fit(lab)
    shares = np.bincount(km.labels_, minlength=k) / len(lab)
    return km.cluster_centers_, shares


def palette_distance(colours: np.ndarray, weights: np.ndarray, palette: np.ndarray) -> float:
    """CIEDE2000 distance of weighted Lab ``colours`` to their nearest ``palette`` colour,
    averaged with ``weights`` (how well the palette covers the colours)."""
    from skimage.color import deltaE_ciede2000

    de = deltaE_ciede2000(colours[:, None, :], palette[None, :, :])
    return float((de.min(1) * weights).sum() / weights.sum())


def percentiles(distances: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Rank of each row's ``chosen`` column among its ``distances`` as 0..1 (ties: middle).

    0 is the closest reference, 1 the farthest; a random choice averages 0.5.
    """
    d = distances[np.arange(len(chosen)), chosen][:, None]
    below = (distances < d).sum(1)
    ties = (distances == d).sum(1) - 1
    return (below + ties / 2) / (distances.shape[1] - 1)


def normalised_entropy(labels: Sequence[str], n_classes: int) -> float:
    """Entropy of the label distribution divided by ``log(n_classes)`` (1 = uniform)."""
    _, counts = np.unique(np.asarray(labels, dtype=str), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / np.log(n_classes))


@dataclass
class Judges:
    """Judge palettes: per style (k-means of the whole artwork) and per item (labels; k-means
    of the central crop when computed)."""

    style_palettes: list[np.ndarray]
    item_label_lab: dict[str, np.ndarray]
    item_kmeans: dict[str, tuple[np.ndarray, np.ndarray]]

    @classmethod
    def build(cls, style_paths: Sequence[str], articles: pd.DataFrame,
              item_paths: dict[str, str] | None = None, k: int = 5) -> Judges:
        styles = [kmeans_palette(p, k, product=False)[0] for p in style_paths]
        lab = label_lab(articles["colour_group_name"].tolist())
        labels = {a: lab[i] for i, a in enumerate(articles["article_id"].astype(str))
                  if not np.isnan(lab[i]).any()}
        from tqdm.auto import tqdm

        kms = {i: kmeans_palette(p, k) for i, p in tqdm(
            (item_paths or {}).items(), desc="k-means judge", unit="img", mininterval=5,
            disable=not item_paths)}
        return cls(styles, labels, kms)

    def label_distances(self, items: Sequence[str]) -> np.ndarray | None:
        """``[n_styles]`` label-judge distances of a shopper's items (None: no labels)."""
        colours = [self.item_label_lab[i] for i in items if i in self.item_label_lab]
        if not colours:
            return None
        c = np.stack(colours)
        return np.array([palette_distance(c, np.ones(len(c)), p) for p in self.style_palettes])

    def kmeans_distances(self, items: Sequence[str]) -> np.ndarray | None:
        """``[n_styles]`` k-means-judge distances (items' palettes pooled, equal weight each)."""
        found = [self.item_kmeans[i] for i in items if i in self.item_kmeans]
        if not found:
            return None
        c = np.concatenate([f[0] for f in found])
        w = np.concatenate([f[1] / len(found) for f in found])
        return np.array([palette_distance(c, w, p) for p in self.style_palettes])


def colour_agreement(histories: dict[str, list[str]], matched: dict[str, int],
                     judges: Judges) -> dict[str, dict[str, float]]:
    """Mean percentile of the matched style under each judge, with a bootstrap interval."""
    out = {}
    for name, fn in (("labels", judges.label_distances), ("kmeans", judges.kmeans_distances)):
        pct = []
        for user, items in histories.items():
            d = fn(items)
            if d is not None:
                pct.append(percentiles(d[None], np.array([matched[user]]))[0])
        if pct:
            low, high = bootstrap_ci(pct)
            out[name] = {"mean_percentile": float(np.mean(pct)), "ci_low": low,
                         "ci_high": high, "users": len(pct)}
    return out


def stability(old: dict[str, str], new: dict[str, str], n_resamples: int = 1000,
              seed: int = 0) -> dict[str, float]:
    """Agreement of the older-half and newer-half matches against chance, with an interval.

    Chance is the agreement of independent draws from the two halves' style
    distributions, ``sum_s p_old(s) p_new(s)``; the ratio's interval is bootstrapped
    over shoppers (chance recomputed on each resample).
    """
    users = sorted(set(old) & set(new))
    a = np.array([old[u] for u in users])
    b = np.array([new[u] for u in users])

    def agreement(idx: np.ndarray) -> tuple[float, float]:
        styles, inv = np.unique(np.r_[a[idx], b[idx]], return_inverse=True)
        pa = np.bincount(inv[:len(idx)], minlength=len(styles)) / len(idx)
        pb = np.bincount(inv[len(idx):], minlength=len(styles)) / len(idx)
        return float((a[idx] == b[idx]).mean()), float(pa @ pb)

    agree, chance = agreement(np.arange(len(users)))
    lift = agree / chance
    rng = np.random.default_rng(seed)
    boot = [np.divide(*agreement(rng.integers(0, len(users), len(users))))
            for _ in range(n_resamples)]
    return {"users": len(users), "agreement": agree, "chance": chance, "ratio": lift,
            "ratio_ci_low": float(np.quantile(boot, 0.025)),
            "ratio_ci_high": float(np.quantile(boot, 0.975))}


def mix_stability(old: dict[str, np.ndarray], new: dict[str, np.ndarray], seed: int = 0
                  ) -> dict[str, float]:
    """Distance of a shopper's two mixed style vectors vs random pairs of shoppers.

    Returns the mean Euclidean distances (same shopper; shopper's older half vs a
    random other shopper's newer half) and the bootstrap interval of their ratio.
    """
    users = sorted(set(old) & set(new))
    a, b = np.stack([old[u] for u in users]), np.stack([new[u] for u in users])
    rng = np.random.default_rng(seed)
    shift = rng.integers(1, len(users), len(users))
    other = (np.arange(len(users)) + shift) % len(users)
    same = np.linalg.norm(a - b, axis=1)
    rand = np.linalg.norm(a - b[other], axis=1)
    ratios = []
    for _ in range(1000):
        idx = rng.integers(0, len(users), len(users))
        ratios.append(same[idx].mean() / rand[idx].mean())
    return {"users": len(users), "same_user": float(same.mean()),
            "random_pair": float(rand.mean()), "ratio": float(same.mean() / rand.mean()),
            "ratio_ci_low": float(np.quantile(ratios, 0.025)),
            "ratio_ci_high": float(np.quantile(ratios, 0.975))}


def discrimination(matched: Sequence[str], n_styles: int, n_resamples: int = 1000,
                   seed: int = 0) -> dict[str, float]:
    """Normalised entropy and the top reference's share relative to ``1 / n_styles``, with
    bootstrap intervals over shoppers."""
    labels = np.asarray(matched, dtype=str)

    def figures(sample: np.ndarray) -> tuple[float, float]:
        _, counts = np.unique(sample, return_counts=True)
        return normalised_entropy(sample, n_styles), counts.max() / len(sample) * n_styles

    entropy, top = figures(labels)
    rng = np.random.default_rng(seed)
    boot = np.array([figures(labels[rng.integers(0, len(labels), len(labels))])
                     for _ in range(n_resamples)])
    low, high = np.quantile(boot, [0.025, 0.975], axis=0)
    return {"users": len(labels), "normalised_entropy": entropy,
            "entropy_ci_low": float(low[0]), "entropy_ci_high": float(high[0]),
            "styles_used": len(np.unique(labels)), "n_styles": n_styles,
            "max_share_over_fair": float(top), "max_share_ci_low": float(low[1]),
            "max_share_ci_high": float(high[1])}


def near_sets(judges: Judges, catalog: Sequence[str], fraction: float = 0.1, seed: int = 0
              ) -> list[set[str]]:
    """For each style, the ``fraction`` of ``catalog`` items (with a colour label) nearest to
    its palette by the label judge; ties broken by a seeded random order."""
    from skimage.color import deltaE_ciede2000

    items = [i for i in catalog if i in judges.item_label_lab]
    lab = np.stack([judges.item_label_lab[i] for i in items])
    n_near = max(1, int(round(fraction * len(items))))
    jitter = np.random.default_rng(seed).random(len(items)) * 1e-6
    out = []
    for palette in judges.style_palettes:
        d = deltaE_ciede2000(lab[:, None, :], palette[None, :, :]).min(1) + jitter
        out.append({items[j] for j in np.argsort(d)[:n_near]})
    return out


def near_shares(bought: Sequence[str], near: list[set[str]]) -> np.ndarray:
    """``[n_styles]``: the share of ``bought`` in each style's near set."""
    return np.array([sum(i in s for i in bought) / len(bought) for s in near])


def record_label_percentiles(result: Mapping[str, Any], judges: Judges,
                             library: Sequence[str]) -> dict[str, float]:
    """unit -> the label-judge percentile of its matched reference, from a
    ``style-report`` record's per-unit rows (units with labels)."""
    if list(result["params"]["library"]) != list(library):
        raise ValueError("the record was made with a different style library")
    row = {s: i for i, s in enumerate(library)}
    out = {}
    for unit in result["units"]:
        d = judges.label_distances(unit["items"])
        if d is not None:
            out[unit["unit"]] = float(percentiles(d[None], np.array([row[unit["style"]]]))[0])
    return out


def behaviour_lift(future: dict[str, list[str]], matched: dict[str, int],
                   near: list[set[str]], seed: int = 0) -> dict[str, float]:
    """Share of each shopper's later purchases near their matched style vs near a random style.

    Returns both mean shares, their ratio (the lift), its 95% bootstrap interval over
    shoppers, and the one-sided 95% lower bound (the 5th percentile: "bought near the
    matched style more often" is a one-sided claim, judged like the learned ranker's
    gains).
    """
    users = [u for u in future if u in matched and future[u]]
    hit_matched, hit_random = [], []
    for u in users:
        shares = near_shares(future[u], near)
        hit_matched.append(shares[matched[u]])
        hit_random.append(shares.mean())
    m, r = np.array(hit_matched), np.array(hit_random)
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(1000):
        idx = rng.integers(0, len(users), len(users))
        ratios.append(m[idx].mean() / max(r[idx].mean(), 1e-12))
    return {"users": len(users), "matched_share": float(m.mean()),
            "random_share": float(r.mean()), "lift": float(m.mean() / r.mean()),
            "lift_ci_low": float(np.quantile(ratios, 0.025)),
            "lift_ci_high": float(np.quantile(ratios, 0.975)),
            "lift_one_sided_low": float(np.quantile(ratios, 0.05))}


def _label_rows(histories: dict[str, list[str]], judges: Judges
                ) -> tuple[list[str], np.ndarray]:
    """Shoppers with a colour label and their ``[n, n_styles]`` label-judge distances."""
    users, rows = [], []
    for user, items in histories.items():
        d = judges.label_distances(items)
        if d is not None:
            users.append(user)
            rows.append(d)
    return users, np.reshape(rows, (len(rows), len(judges.style_palettes)))


def judge_as_matcher(histories: dict[str, list[str]], older: dict[str, list[str]],
                     newer: dict[str, list[str]], judges: Judges, names: Sequence[str],
                     max_share: float, future: dict[str, list[str]] | None = None,
                     near: list[set[str]] | None = None, seed: int = 0) -> dict[str, Any]:
    """The checks with the label judge as the matcher: what matching on the shoppers'
    colour labels alone reaches on these shoppers. A reference point, not a bound: a
    matcher seeing the pixels knows more than the labels (shades, several colours per
    item), so it can be more stable; the lift is judged on the labels themselves.

    Each shopper takes the reference of least label-judge distance, plainly
    (``"plain"``) and under capacity prices at ``max_share``
    (:func:`~recsys.aesthetic.capacity_prices` of minus the whole histories'
    distances, as ``hubness="balanced"`` learns them; ``"capped"``); the halves are
    matched at the same prices. Labels are coarse, so many shoppers tie exactly and no
    price could split them: each shopper's distances get a fixed ``seed``-ed jitter
    below 0.001 ΔE00, the same in both halves (consistent tie-breaks can only raise the
    stability). ``"colour_mode"``: the stability of each half's most frequent label
    colour (no library involved; ties go to the colour met first).
    """
    from recsys.aesthetic import capacity_prices

    everyone = sorted(set(histories) | set(older) | set(newer))
    noise = dict(zip(everyone, np.random.default_rng(seed).random(
        (len(everyone), len(names))) * 1e-3, strict=True))

    def scores(part: dict[str, list[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
        users, dist = _label_rows(part, judges)
        return users, dist, -dist - np.array([noise[u] for u in users]).reshape(dist.shape)

    users, dist, full = scores(histories)
    halves = [scores(part) for part in (older, newer)]
    out: dict[str, Any] = {"users": len(users), "max_share": max_share}
    for name, prices in (("plain", np.zeros(len(names))),
                         ("capped", capacity_prices(full, max_share, names))):
        matched = {u: int(i) for u, i in zip(users, np.argmax(full - prices, 1), strict=True)}
        old, new = ({u: names[i] for u, i in zip(us, np.argmax(h - prices, 1), strict=True)}
                    for us, _, h in halves)
        out[name] = {
            "label_percentile": float(percentiles(dist, np.array(list(matched.values()))).mean()),
            "stability": stability(old, new),
            "discrimination": discrimination([names[i] for i in matched.values()], len(names))}
        if future is not None and near is not None:
            out[name]["behaviour"] = behaviour_lift(future, matched, near)

    def mode(part: dict[str, list[str]]) -> dict[str, str]:
        colours = {u: [tuple(judges.item_label_lab[i].round(3)) for i in items
                       if i in judges.item_label_lab] for u, items in part.items()}
        return {u: str(Counter(c).most_common(1)[0][0]) for u, c in colours.items() if c}

    out["colour_mode"] = stability(mode(older), mode(newer))
    return out


def unit_histories(frame: pd.DataFrame, unit_col: str = "unit",
                   item_col: str = "article_id") -> dict[str, list[str]]:
    """unit -> its distinct items, sorted."""
    return {u: sorted(set(g)) for u, g in frame.groupby(unit_col)[item_col]}


def split_halves(frame: pd.DataFrame, user_col: str, time_col: str
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's events on their older and newer half of distinct days (never cutting a
    day); users with a single day are left out."""
    days = frame.groupby(user_col)[time_col].transform(lambda s: s.rank(method="dense"))
    n_days = frame.groupby(user_col)[time_col].transform("nunique")
    keep = n_days >= 2
    older = days <= np.ceil(n_days / 2)
    return frame[keep & older], frame[keep & ~older]


@dataclass
class Matches:
    """Matched styles of a set of histories: nearest reference (row in the library), its
    cosine, and the personal mix."""

    nearest: dict[str, int]
    similarity: dict[str, float]
    mixes: dict[str, object]


def match_histories(frame: pd.DataFrame, matcher: object, item_ids: Sequence[str],
                    item_vectors: np.ndarray, user_col: str = "customer_id",
                    item_col: str = "article_id",
                    time_col: str = "t_dat") -> Matches:
    """Aesthetic vectors of the users in ``frame`` (the matcher's
    :meth:`~recsys.aesthetic.AestheticMatcher.taste_model` on the items' space vectors:
    confidence and recency weights, one or several centroids) matched by ``matcher``
    (:class:`~recsys.aesthetic.AestheticMatcher`). Users none of whose items has a
    descriptor are left out."""
    from recsys.interactions import Interactions
    from recsys.taste import TasteProfiles

    data = Interactions.from_frame(frame, user_col, item_col, time_col)
    taste = matcher.taste_model().fit(data, item_ids, item_vectors)
    users = list(data.user_ids)
    profiles = taste.transform(users)
    keep = ~profiles.fallback
    users = [u for u, k in zip(users, keep, strict=True) if k]
    profiles = TasteProfiles(profiles.vectors[keep], profiles.weights[keep],
                             profiles.fallback[keep], profiles.folded_in[keep])
    ids, sims = matcher.match(profiles, 1)
    row = {s: i for i, s in enumerate(matcher.style_ids_)}
    mixes = matcher.personal_style(profiles) if matcher.magenta_ is not None else []
    return Matches({u: row[s] for u, s in zip(users, ids[:, 0], strict=True)},
                   {u: float(s) for u, s in zip(users, sims[:, 0], strict=True)},
                   dict(zip(users, mixes, strict=False)))
