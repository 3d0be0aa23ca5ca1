"""Data for ``stylerec bench``: the real log, replicated to larger scales, and its images.

Scaling replicates the real data set rather than inventing one: at scale ``f``
every user ``u`` and item ``i`` of the log appears ``f`` times, replica ``r``
(``r = 1 … f-1``) under the new ids ``u#r`` and ``i#r`` (replica 0 keeps the
original ids, so scale 1 *is* the real log). Replica ``r`` users buy only replica
``r`` items, with the same dates, so the user × item matrix is ``f`` copies of the
real one on the block diagonal: ``f``× the users, items and non-zeros with the
real per-user and per-item degree distributions. Replicated items reuse their
original's image and embedding. Per-iteration ALS cost is linear in those counts;
what the replication does not model is a larger set of *distinct* images.

Examples
--------
>>> import pandas as pd
>>> log = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "x"]})
>>> replicate(log, 2, "user_id", "item_id").values.tolist()
[['a', 'x'], ['b', 'x'], ['a#1', 'x#1'], ['b#1', 'x#1']]
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ground.files import atomic_write
from recsys.catalog import Catalog
from recsys.interactions import Interactions, load_interactions, pick_columns

SEPARATOR = "#"


def replica_id(item: str, replica: int) -> str:
    """The id of ``item`` in replica ``replica`` (replica 0 keeps the original id)."""
    return item if replica == 0 else f"{item}{SEPARATOR}{replica}"


def original_id(replicated: str) -> str:
    """Inverse of :func:`replica_id`."""
    return replicated.split(SEPARATOR, 1)[0]


def replicate(frame: pd.DataFrame, factor: int, user_col: str, item_col: str) -> pd.DataFrame:
    """``factor`` copies of an interaction log with disjoint user and item ids.

    Parameters
    ----------
    frame : DataFrame
        The log; ids must not already contain ``"#"``.
    factor : int
        Number of replicas (1 returns a copy).
    user_col, item_col : str
        Id columns; every other column is copied unchanged.

    Returns
    -------
    DataFrame
        ``factor * len(frame)`` rows: replica 0 first, then replica 1 with ids
        suffixed ``#1``, and so on.
    """
    if factor < 1:
        raise ValueError(f"scale factor must be >= 1, got {factor}")
    for col in (user_col, item_col):
        if frame[col].astype(str).str.contains(SEPARATOR, regex=False).any():
            raise ValueError(f"ids in {col!r} already contain {SEPARATOR!r}")
    parts = []
    for r in range(factor):
        part = frame.copy()
        if r:
            part[user_col] = part[user_col].astype(str) + f"{SEPARATOR}{r}"
            part[item_col] = part[item_col].astype(str) + f"{SEPARATOR}{r}"
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def detect_columns(frame: pd.DataFrame) -> tuple[str, str, str | None]:
    """User, item and time (None if absent) columns of a log, by the layouts
    :func:`~recsys.interactions.load_interactions` knows."""
    user_col, item_col, time_col, _ = pick_columns(frame)
    return user_col, item_col, time_col


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` through a temporary file renamed into place."""
    with atomic_write(path, "w") as handle:
        frame.to_csv(handle, index=False)
    return path


class BenchData:
    """The benchmark's data at every scale, built lazily and cached.

    Parameters
    ----------
    transactions : Path
        The real interaction log (H&M ``transactions.csv`` layout or any layout
        :func:`~recsys.interactions.load_interactions` recognises).
    images : Path, optional
        Root of the item images (``<root>/**/<item_id>.jpg``).
    styles : Path, optional
        Folder of style reference images.
    work_dir : Path
        Where replicated logs are written.
    max_users : int, optional
        Keep only this many users (drawn with ``seed``) before replicating: for
        quick runs.
    seed : int
        Seed of the user sample.
    """

    def __init__(self, transactions: Path, images: Path | None, styles: Path | None,
                 work_dir: Path, max_users: int | None = None, seed: int = 0) -> None:
        if not transactions.is_file():
            raise FileNotFoundError(f"interaction log not found: {transactions}")
        self.transactions = transactions
        self.images = images
        self.styles = styles
        self.work_dir = work_dir
        self.max_users = max_users
        self.seed = seed
        self._csv: dict[int, Path] = {}
        self._interactions: dict[int, Interactions] = {}

    @cached_property
    def base_frame(self) -> pd.DataFrame:
        """The real log as strings (users sampled down to ``max_users`` if set)."""
        frame = pd.read_csv(self.transactions, dtype=str, keep_default_na=False)
        user_col = detect_columns(frame)[0]
        if self.max_users is not None:
            users = np.sort(frame[user_col].unique())
            if self.max_users < len(users):
                rng = np.random.default_rng(self.seed)
                keep = rng.choice(users, size=self.max_users, replace=False)
                frame = frame[frame[user_col].isin(keep)].reset_index(drop=True)
        return frame

    @cached_property
    def columns(self) -> tuple[str, str, str | None]:
        """User, item and time columns of the log."""
        return detect_columns(self.base_frame)

    def csv(self, scale: int) -> Path:
        """A log file at ``scale``: the original file when nothing changes, else a replica."""
        if scale not in self._csv:
            if scale == 1 and self.max_users is None:
                self._csv[scale] = self.transactions
            else:
                frame = replicate(self.base_frame, scale, *self.columns[:2])
                users = "" if self.max_users is None else f"_u{self.max_users}s{self.seed}"
                name = f"{self.transactions.stem}{users}_x{scale}.csv"
                self._csv[scale] = write_csv_atomic(frame, self.work_dir / name)
        return self._csv[scale]

    def interactions(self, scale: int) -> Interactions:
        """The log at ``scale`` loaded with :func:`load_interactions` (cached)."""
        if scale not in self._interactions:
            self._interactions[scale] = load_interactions(self.csv(scale))
        return self._interactions[scale]

    def drop(self, scale: int) -> None:
        """Forget the loaded log of ``scale`` (its file stays for a later run)."""
        self._interactions.pop(scale, None)

    @cached_property
    def image_catalog(self) -> Catalog:
        """Every image under :attr:`images`, keyed by file stem (the item id)."""
        if self.images is None:
            raise FileNotFoundError("no image folder given (--images)")
        return Catalog.from_directory(self.images)

    def item_images(self, scale: int) -> dict[str, Path]:
        """Item id at ``scale`` → image path relative to the image root, for items with one."""
        catalog = self.image_catalog
        out: dict[str, Path] = {}
        for item in self.interactions(scale).item_ids:
            original = original_id(item)
            if original in catalog:
                out[item] = catalog.relative_path(original)
        return out

    def catalog(self, scale: int) -> Catalog:
        """A :class:`~recsys.catalog.Catalog` of the items at ``scale`` (replicas share images)."""
        return Catalog(self.image_catalog.root, self.item_images(scale))

    def image_paths(self, n: int) -> list[Path]:
        """``n`` image paths of distinct items of the real log (in item-id order)."""
        items = [i for i in self.interactions(1).item_ids if i in self.image_catalog]
        if not items:
            raise FileNotFoundError(f"no images of the log's items under {self.images}")
        return [self.image_catalog.path(i) for i in items[:n]]

    def style_paths(self, n: int | None = None) -> list[Path]:
        """Up to ``n`` style reference images, sorted by name."""
        if self.styles is None or not self.styles.is_dir():
            raise FileNotFoundError(f"style folder not found: {self.styles}")
        paths = sorted(p for p in self.styles.iterdir()
                       if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not paths:
            raise FileNotFoundError(f"no style images in {self.styles}")
        return paths[:n]
