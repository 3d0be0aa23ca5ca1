"""Interaction logs: loading, validation, id maps and the user × item confidence matrix."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger(__name__)

WEIGHTINGS = ("count", "binary", "value", "recency")

# Known layouts, tried in order when the caller names no columns:
# (user, item, time, value, read options)
KNOWN_SCHEMAS = {
    "hm": ("customer_id", "article_id", "t_dat", None),
    "movielens": ("user_id", "item_id", "timestamp", "rating"),
    "generic": ("user_id", "item_id", None, None),
}
MOVIELENS_NAMES = ["user_id", "item_id", "rating", "timestamp"]


@dataclass(frozen=True)
class Interactions:
    """A validated interaction log with dense id maps and a confidence matrix.

    ``events`` keeps one row per interaction (duplicates included) with dense
    ``user`` / ``item`` indices, an optional ``time`` and a ``value`` (rating,
    quantity, or 1). ``matrix`` aggregates them into a CSR users × items matrix
    of confidence weights; duplicates are summed (``count``/``value``/``recency``)
    or capped at 1 (``binary``).

    Weightings
    ----------
    count
        number of interactions with the item.
    binary
        1 if the user interacted at all.
    value
        sum of ``value`` (e.g. ratings).
    recency
        sum over interactions of ``value * 0.5 ** (age_days / half_life_days)``,
        ``age_days`` counted back from the latest event in the log.

    Examples
    --------
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"]})
    >>> data = Interactions.from_frame(frame)
    >>> data.matrix.toarray()
    array([[1., 1.],
           [1., 0.]], dtype=float32)
    """

    events: pd.DataFrame
    user_ids: np.ndarray
    item_ids: np.ndarray
    weighting: str = "count"
    half_life_days: float | None = None
    source: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.weighting == "recency":
            if not self.half_life_days or self.half_life_days <= 0:
                raise ValueError("weighting='recency' needs half_life_days > 0")
            if self.events["time"].isna().any():
                raise ValueError("weighting='recency' needs a time for every interaction")

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        user_col: str = "user_id",
        item_col: str = "item_id",
        time_col: str | None = None,
        value_col: str | None = None,
        *,
        weighting: str = "count",
        half_life_days: float | None = None,
        time_unit: str | None = None,
        user_ids: Sequence[str] | None = None,
        item_ids: Sequence[str] | None = None,
    ) -> Interactions:
        """Validate a data frame of interactions and index its ids.

        Parameters
        ----------
        frame : DataFrame
            One row per interaction.
        user_col, item_col : str
            Columns with the external user and item ids (read as strings).
        time_col : str, optional
            Column with a timestamp: dates/datetimes, or numbers in ``time_unit``.
        value_col : str, optional
            Column with a non-negative weight (rating, quantity); 1 when absent.
        weighting : {"count", "binary", "value", "recency"}
            How events become confidence weights (see the class docstring).
        half_life_days : float, optional
            Half-life of the recency decay; required for ``weighting="recency"``.
        time_unit : str, optional
            Unit of a numeric ``time_col`` (``"s"`` for Unix seconds).
        user_ids, item_ids : sequence of str, optional
            A fixed vocabulary (e.g. the training set's); ids outside it raise.

        Raises
        ------
        ValueError
            Empty input, missing columns, missing ids, NaN/negative/infinite
            values or unparseable times; the message names the first bad row.
        """
        if len(frame) == 0:
            raise ValueError("interaction log is empty: no rows to learn from")
        wanted = [c for c in (user_col, item_col, time_col, value_col) if c is not None]
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise ValueError(
                f"missing column(s) {missing}; the log has {list(frame.columns)}. "
                "Name the right ones with user_col/item_col/time_col/value_col."
            )
        users = _id_column(frame, user_col)
        items = _id_column(frame, item_col)
        values = _value_column(frame, value_col)
        times = _time_column(frame, time_col, time_unit)

        user_vocab, user_codes = _encode(users, user_ids, "user")
        item_vocab, item_codes = _encode(items, item_ids, "item")
        events = pd.DataFrame(
            {"user": user_codes, "item": item_codes, "time": times, "value": values}
        )
        return cls(events, user_vocab, item_vocab, weighting, half_life_days)

    def select(self, mask: np.ndarray | pd.Series) -> Interactions:
        """The events where ``mask`` is true, with the same id vocabulary.

        Keeping the vocabulary fixed is what lets a train and a test split share
        one index space.
        """
        events = self.events[np.asarray(mask, dtype=bool)].reset_index(drop=True)
        return Interactions(
            events, self.user_ids, self.item_ids, self.weighting, self.half_life_days, self.source
        )

    def reweight(self, weighting: str, half_life_days: float | None = None) -> Interactions:
        """The same events with another confidence weighting."""
        return Interactions(
            self.events, self.user_ids, self.item_ids, weighting, half_life_days, self.source
        )

    # -- views ----------------------------------------------------------------

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.events)

    def __repr__(self) -> str:
        return (
            f"Interactions({len(self)} events, {self.n_users} users, {self.n_items} items, "
            f"weighting={self.weighting!r})"
        )

    @cached_property
    def event_weights(self) -> np.ndarray:
        """Confidence contributed by each event (before aggregation)."""
        value = self.events["value"].to_numpy(np.float64)
        if self.weighting in ("count", "binary"):
            return np.ones(len(value))
        if self.weighting == "value":
            return value
        times = self.events["time"]
        age_days = (times.max() - times).dt.total_seconds().to_numpy() / 86400.0
        return value * np.power(0.5, age_days / self.half_life_days)

    @cached_property
    def matrix(self) -> sp.csr_matrix:
        """Users × items CSR matrix of confidence weights (float32)."""
        coo = sp.coo_matrix(
            (
                self.event_weights,
                (self.events["user"].to_numpy(), self.events["item"].to_numpy()),
            ),
            shape=(self.n_users, self.n_items),
        )
        csr = coo.tocsr()  # sums duplicates
        csr.sum_duplicates()
        if self.weighting == "binary":
            csr.data[:] = 1.0
        csr.eliminate_zeros()
        return csr.astype(np.float32)

    @cached_property
    def _user_pos(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}

    @cached_property
    def _item_pos(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.item_ids)}

    def user_index(self, user_ids: Iterable[str] | str, *, missing: str = "raise") -> np.ndarray:
        """Dense indices of external user ids.

        ``missing="raise"`` names the unknown ids in a KeyError; ``missing="ignore"``
        returns -1 for them.
        """
        return _lookup(self._user_pos, user_ids, "user", missing)

    def item_index(self, item_ids: Iterable[str] | str, *, missing: str = "raise") -> np.ndarray:
        """Dense indices of external item ids (see :meth:`user_index`)."""
        return _lookup(self._item_pos, item_ids, "item", missing)

    def user_history(self, user_id: str) -> pd.DataFrame:
        """The events of one user, oldest first, with external item ids."""
        idx = int(self.user_index(user_id)[0])
        rows = self.events[self.events["user"] == idx].sort_values("time", kind="stable")
        return rows.assign(item_id=self.item_ids[rows["item"].to_numpy()])


def load_interactions(
    path: str | Path,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    value_col: str | None = None,
    *,
    weighting: str = "count",
    half_life_days: float | None = None,
    time_unit: str | None = None,
    sep: str | None = None,
) -> Interactions:
    """Load an interaction log from CSV/TSV or Parquet.

    With no column names given, known layouts are recognised: the H&M
    ``transactions.csv`` (``customer_id, article_id, t_dat``), MovieLens
    ``u.data``/``u1.base`` (tab-separated, no header: user, item, rating, Unix
    time; ratings become ``value``) and a generic ``user_id, item_id`` log.
    Every id column is read as a string, so ids with leading zeros survive.

    Examples
    --------
    >>> data = load_interactions("data/transactions.csv")  # doctest: +SKIP
    >>> ml = load_interactions("u.data", weighting="value")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"interaction log not found: {path}")
    frame = _read_table(path, sep)
    if user_col is None and item_col is None:
        for schema in KNOWN_SCHEMAS.values():
            if all(c is None or c in frame.columns for c in schema[:2]):
                user_col, item_col, t, v = schema
                time_col = time_col or (t if t in frame.columns else None)
                value_col = value_col or (v if v in frame.columns else None)
                break
        else:
            raise ValueError(
                f"{path}: can't tell the user and item columns from {list(frame.columns)}; "
                "pass user_col= and item_col="
            )
    if time_col == "timestamp" and time_unit is None and pd.api.types.is_numeric_dtype(
        frame.get(time_col)
    ):
        time_unit = "s"
    log.info("loading %s: %d rows", path, len(frame))
    try:
        data = Interactions.from_frame(
            frame,
            user_col,
            item_col,
            time_col,
            value_col,
            weighting=weighting,
            half_life_days=half_life_days,
            time_unit=time_unit,
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    source = {"path": str(path), "rows": len(frame), "columns": [user_col, item_col, time_col,
              value_col]}
    return Interactions(data.events, data.user_ids, data.item_ids, weighting, half_life_days,
                        source)


def _read_table(path: Path, sep: str | None) -> pd.DataFrame:
    if path.suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
        for col in frame.columns:
            if col.endswith("_id") or col in ("user", "item"):
                frame[col] = frame[col].astype("string")
        return frame
    is_movielens = path.name == "u.data" or path.suffix in (".base", ".test")
    if is_movielens:
        return pd.read_csv(path, sep=sep or "\t", names=MOVIELENS_NAMES, dtype={
            "user_id": str, "item_id": str})
    head = path.open(encoding="utf-8", errors="replace").readline()
    sep = sep or ("\t" if "\t" in head else ",")
    columns = [c.strip() for c in head.strip().split(sep)]
    as_str = {c: str for c in columns if c.endswith("_id") or c in ("user", "item")}
    return pd.read_csv(path, sep=sep, dtype=as_str)


def _id_column(frame: pd.DataFrame, col: str) -> np.ndarray:
    series = frame[col]
    bad = series.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"row {row}: missing {col!r} ({int(bad.sum())} rows lack it)")
    values = series.astype(str).str.strip().to_numpy()
    empty = values == ""
    if empty.any():
        raise ValueError(f"row {int(np.flatnonzero(empty)[0])}: empty {col!r}")
    return values


def _value_column(frame: pd.DataFrame, col: str | None) -> np.ndarray:
    if col is None:
        return np.ones(len(frame))
    values = pd.to_numeric(frame[col], errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"row {row}: {col!r} must be a finite non-negative number, got {frame[col].iloc[row]!r}"
        )
    return values


def _time_column(frame: pd.DataFrame, col: str | None, unit: str | None) -> pd.Series:
    if col is None:
        return pd.Series(pd.NaT, index=range(len(frame)), dtype="datetime64[ns]")
    raw = frame[col].reset_index(drop=True)
    if unit is not None:
        parsed = pd.to_datetime(pd.to_numeric(raw, errors="coerce"), unit=unit, errors="coerce")
    else:
        parsed = pd.to_datetime(raw, errors="coerce")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"row {row}: can't read {col!r} value {raw.iloc[row]!r} as a time")
    return parsed.astype("datetime64[ns]")


def _encode(
    values: np.ndarray, vocabulary: Sequence[str] | None, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    if vocabulary is None:
        vocab, codes = np.unique(values, return_inverse=True)
        return vocab.astype(str), codes.astype(np.int32)
    vocab = np.asarray(vocabulary, dtype=str)
    codes = _lookup({v: i for i, v in enumerate(vocab)}, values, kind, "raise")
    return vocab, codes.astype(np.int32)


def _lookup(
    positions: dict[str, int], ids: Iterable[str] | str, kind: str, missing: str
) -> np.ndarray:
    if isinstance(ids, str):
        ids = [ids]
    ids = list(ids)
    out = np.fromiter((positions.get(str(i), -1) for i in ids), dtype=np.int64, count=len(ids))
    if missing == "raise" and (out < 0).any():
        unknown = [ids[i] for i in np.flatnonzero(out < 0)[:5]]
        raise KeyError(f"unknown {kind} id(s) {unknown} ({int((out < 0).sum())} in all)")
    return out


class _IdPositions:
    """Lazy id -> row maps over a fitted model's ``user_ids_`` and ``item_ids_``.

    Built on first use (a loaded model gets them too) and rebuilt when the id
    array is replaced, so a refitted model never answers from stale maps.
    """

    def _positions(self, attr: str) -> dict[str, int]:
        ids = getattr(self, attr)
        cache = self.__dict__.setdefault("_positions_cache", {})
        cached = cache.get(attr)
        if cached is None or cached[0] is not ids:
            cached = cache[attr] = (ids, {v: i for i, v in enumerate(ids)})
        return cached[1]

    @property
    def _user_pos(self) -> dict[str, int]:
        return self._positions("user_ids_")

    @property
    def _item_pos(self) -> dict[str, int]:
        return self._positions("item_ids_")
