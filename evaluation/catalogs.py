"""Declared candidate catalogs: which items a test window's slates may hold.

The candidate set of a window is an explicit input of an evaluation, never derived
from the evaluated users' test events. Deriving it from them is a leak: every item
whose only events are held-out purchases is, by construction, relevant to someone,
so a ranker that favours "items nobody bought yet" is paid for finding the answers
(it is what the retracted H&M figure of 2.75× ALS measured, see docs/evaluation.md).

A catalog is a list of parts, each a dict with a ``part`` key; their union is the
window's candidate set:

``{"part": "train"}`` (the default catalog)
    items with an event before the cut-off.
``{"part": "unevaluated-buyers"}``
    items bought in the window by users of the log who are not evaluated in it
    (no history before the cut-off): a population disjoint from the evaluated one.
``{"part": "purchases", "path": ..., "user_col", "item_col", "time_col"}``
    items bought in the window in another log of other users, e.g. H&M
    ``transactions_last_week_others.csv`` (the articles on sale in the final week).
    Refused if one of its users is evaluated in the window.
``{"part": "availability", "path": ..., "item_col", "start_col", "end_col"}``
    items whose availability interval (``end_col`` optional, empty = still on sale)
    overlaps the window: a catalog file with dates.

``{"part": "all"}`` and ``{"part": "test"}`` are refused with an error saying why.

Examples
--------
>>> parts = [{"part": "train"}, {"part": "unevaluated-buyers"}]
>>> builder = CatalogBuilder(parts, data)  # doctest: +SKIP
>>> catalog = builder.build(fold.train, fold.test, fold.cutoff, fold.end)  # doctest: +SKIP
>>> catalog.mask.sum(), catalog.parts.keys()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.interactions import Interactions

PARTS = ("train", "unevaluated-buyers", "purchases", "availability")
LEAKY_PARTS = ("all", "test")
DEFAULT_CATALOG: tuple[dict[str, Any], ...] = ({"part": "train"},)


class CatalogLeakError(ValueError):
    """A catalog whose candidates would come from the evaluated users' test events."""


LEAK_EXPLANATION = (
    "the evaluated users' held-out purchases would decide which items are candidates: "
    "every item whose only events are test events is then an answer (on the H&M sample "
    "such items were 7.2x more likely relevant than others, and a 'cold item' bonus "
    "turned that into the retracted 2.75x ALS figure). Declare the catalog instead: "
    "'train' (items with a training event), 'unevaluated-buyers', 'purchases' (another "
    "population's log) or 'availability' (a catalog file with dates); see "
    "evaluation.catalogs"
)


@dataclass(frozen=True)
class DeclaredCatalog:
    """The candidates of one window.

    Attributes
    ----------
    mask : bool ndarray [n_items]
        Candidate vocabulary items.
    parts : dict of str to bool ndarray
        Each part's items (label → mask), to say how a cold item could be reached.
    item_ids : ndarray of str
        Every candidate id, including declared items outside the log's vocabulary
        (they can be recommended but never be relevant).
    external : bool ndarray [n_items]
        Items listed by a catalog file (``purchases``, ``availability``): evidence
        that they were on sale, from outside the evaluated users' events.
    """

    mask: np.ndarray
    parts: dict[str, np.ndarray]
    item_ids: np.ndarray
    external: np.ndarray


def check_catalog(spec: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Validate a catalog spec; refuse parts that derive candidates from test events."""
    parts = [dict(p) for p in (spec if spec is not None else DEFAULT_CATALOG)]
    if not parts:
        raise ValueError("catalog needs at least one part, e.g. [{'part': 'train'}]")
    for i, part in enumerate(parts):
        kind = part.get("part")
        if kind in LEAKY_PARTS:
            raise CatalogLeakError(f"catalog part {i} {kind!r} is refused: {LEAK_EXPLANATION}")
        if kind not in PARTS:
            raise ValueError(f"catalog part {i}: 'part' must be one of {PARTS}, got {kind!r}")
        if kind in ("purchases", "availability") and "path" not in part:
            raise ValueError(f"catalog part {i} ({kind}) needs a 'path'")
    return parts


def _label(part: Mapping[str, Any]) -> str:
    if "label" in part:
        return str(part["label"])
    return part["part"] + (f":{Path(part['path']).name}" if "path" in part else "")


def _read(path: str | Path, columns: Sequence[str], id_columns: Sequence[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalog file not found: {path}")
    head = pd.read_csv(path, nrows=0).columns
    missing = [c for c in columns if c not in head]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; it has {list(head)}")
    table = pd.read_csv(path, usecols=list(columns), dtype={c: str for c in id_columns})
    return table[list(columns)]  # usecols keeps the file's order


class CatalogBuilder:
    """Builds each window's :class:`DeclaredCatalog` from a spec (files read once).

    Parameters
    ----------
    spec : list of dict, optional
        Catalog parts (module docstring); default ``[{"part": "train"}]``.
    data : Interactions
        The whole log (for ``unevaluated-buyers`` and the vocabulary).
    """

    def __init__(self, spec: Sequence[Mapping[str, Any]] | None, data: Interactions) -> None:
        self.parts = check_catalog(spec)
        self.data = data
        self._tables: dict[int, pd.DataFrame] = {}
        for i, part in enumerate(self.parts):
            if part["part"] == "purchases":
                cols = (part.get("user_col", "customer_id"), part.get("item_col", "article_id"),
                        part.get("time_col", "t_dat"))
                table = _read(part["path"], cols, cols[:2])
                table.columns = ["user_id", "item_id", "time"]
                table["time"] = pd.to_datetime(table["time"])
                self._tables[i] = table
            elif part["part"] == "availability":
                cols = [part.get("item_col", "article_id"), part.get("start_col", "start")]
                end = part.get("end_col")
                table = _read(part["path"], cols + ([end] if end else []), cols[:1])
                table.columns = ["item_id", "start"] + (["end"] if end else [])
                table["start"] = pd.to_datetime(table["start"])
                table["end"] = pd.to_datetime(table["end"]) if end else pd.NaT
                self._tables[i] = table

    @property
    def files(self) -> list[str]:
        """Paths of the catalog files (to fingerprint in a record)."""
        return [p["path"] for p in self.parts if "path" in p]

    def build(self, train: Interactions, test: Interactions, start: Any, end: Any
              ) -> DeclaredCatalog:
        """The candidates of the window ``[start, end)`` whose evaluated users are ``test``'s.

        Raises
        ------
        CatalogLeakError
            A ``purchases`` log shares users with the window's evaluated users.
        """
        vocab = self.data.item_ids
        evaluated = set(test.user_ids[np.unique(test.events["user"].to_numpy())])
        start, end = pd.Timestamp(start), pd.Timestamp(end)
        parts: dict[str, np.ndarray] = {}
        external = np.zeros(len(vocab), dtype=bool)
        extra: set[str] = set()
        for i, part in enumerate(self.parts):
            kind, mask = part["part"], np.zeros(len(vocab), dtype=bool)
            if kind == "train":
                mask[train.events["item"].to_numpy()] = True
            elif kind == "unevaluated-buyers":
                ev = self.data.events
                users = self.data.user_ids[ev["user"].to_numpy()]
                inside = ((ev["time"] >= start) & (ev["time"] < end)).to_numpy()
                mask[ev["item"].to_numpy()[inside & ~np.isin(users, list(evaluated))]] = True
            else:
                table = self._tables[i]
                if kind == "purchases":
                    rows = table[(table["time"] >= start) & (table["time"] < end)]
                    shared = evaluated & set(rows["user_id"])
                    if shared:
                        raise CatalogLeakError(
                            f"catalog part {_label(part)!r}: {len(shared)} of its buyers in "
                            f"the window from {start.date()} are evaluated users (e.g. "
                            f"{sorted(shared)[0]!r}); its items would include their test "
                            f"purchases: {LEAK_EXPLANATION}")
                else:
                    rows = table[(table["start"] < end)
                                 & (table["end"].isna() | (table["end"] >= start))]
                ids = rows["item_id"].astype(str).str.strip().unique()
                codes = pd.Index(vocab).get_indexer(ids)
                mask[codes[codes >= 0]] = True
                external |= mask
                extra.update(ids[codes < 0].tolist())
            label = _label(part)
            parts[label] = parts[label] | mask if label in parts else mask
        union = np.logical_or.reduce(list(parts.values()))
        item_ids = np.array([*vocab[union].tolist(), *sorted(extra)], dtype=str)
        return DeclaredCatalog(union, parts, item_ids, external)
