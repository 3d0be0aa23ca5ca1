"""Interaction logs: loading, validation, id maps and the user × item confidence matrix."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger(__name__)

WEIGHTINGS = ("count", "binary", "value", "recency", "log1p", "bm25")
TIME_UNITS = ("D", "s", "ms", "us", "ns")
MAX_ID_LENGTH = 256  # longer ids are refused: they are a wrong column, not an id

# Column names recognised when the caller names none, best first (compared lower-case)
USER_COLUMNS = ("user_id", "user", "userid", "customer_id", "customer", "uid", "visitor_id",
                "visitorid", "member_id", "client_id", "session_id", "buyer_id")
ITEM_COLUMNS = ("item_id", "item", "itemid", "article_id", "article", "product_id", "product",
                "movie_id", "movieid", "iid", "sku", "track_id", "artist_id", "book_id", "isbn")
TIME_COLUMNS = ("timestamp", "t_dat", "time", "datetime", "date", "ts", "event_time",
                "created_at")
VALUE_COLUMNS = ("rating", "value", "quantity", "qty", "plays", "playcount", "play_count",
                 "count")
MOVIELENS_NAMES = ["user_id", "item_id", "rating", "timestamp"]
_BM25_FLOOR = 1e-3
# raw confidence values spanning more orders of magnitude than this get a warning
_WIDE_SPAN = 1e3
# a date like 01/02/2018: day and month order can't be told from the text alone
_SLASHED_DATE = r"^\s*(\d{1,2})[/.-](\d{1,2})[/.-](\d{2}|\d{4})(?:$|[ T])"


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
    log1p
        ``log(1 + sum of value)``: heavy-tailed counts (plays, clicks) compressed
        so that one user's 300,000 plays do not swamp everything else.
    bm25
        BM25 weighting of the summed values (implicit's ``bm25_weight`` on the
        items × users matrix, K1=100, B=0.8, as in implicit's last.fm example):
        saturates repeated interactions; weights are floored at 0.001 so that
        every interaction stays in the matrix.

    ``value`` on raw counts spanning more than three orders of magnitude logs a
    warning: ALS fits such weights badly; ``log1p`` or ``bm25`` fit them well.

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
        date_format: str | None = None,
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
        time_unit : {"D", "s", "ms", "us", "ns"}, optional
            Unit of a numeric ``time_col``; told from the magnitude when not given.
        date_format : str, optional
            ``strftime`` format of a text ``time_col`` (see :func:`load_interactions`).
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
        times = _time_column(frame, time_col, time_unit, date_format)

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
        if self.weighting in ("value", "log1p", "bm25"):
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
        positive = csr.data[csr.data > 0]
        if (self.weighting == "value" and len(positive)
                and positive.max() > _WIDE_SPAN * positive.min()):
            log.warning(
                "weighting='value': confidence values span %.3g to %.3g (more than three "
                "orders of magnitude); ALS fits such weights badly: use weighting='log1p' or "
                "'bm25'", positive.min(), positive.max())
        if self.weighting == "log1p":
            csr.data = np.log1p(csr.data)
        elif self.weighting == "bm25":
            from implicit.nearest_neighbours import bm25_weight

            # implicit's convention: rows are items (documents), columns users
            csr = bm25_weight(csr.T.tocoo(), K1=100, B=0.8).T.tocsr()
            # tiny logs can give idf <= 0; a floor keeps every interaction (and filtering)
            csr.data = np.maximum(csr.data, _BM25_FLOOR)
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
    date_format: str | None = None,
    sep: str | None = None,
    header: bool = True,
    columns: Sequence[str] | None = None,
    encoding: str | None = None,
) -> Interactions:
    """Load an interaction log from CSV/TSV or Parquet.

    Columns not named are recognised: the user column among :data:`USER_COLUMNS`
    (``user_id``, ``user``, ``customer_id``…), the item column among
    :data:`ITEM_COLUMNS` (``item_id``, ``item``, ``article_id``…), a time column
    among :data:`TIME_COLUMNS` and a value column among :data:`VALUE_COLUMNS`.
    H&M ``transactions.csv`` and MovieLens ``u.data``/``u1.base`` (tab-separated,
    no header) work as they are.

    Every column of a text file is read as text, so ids are strings, always:
    ``0001`` and ``1`` stay two users, ``NA`` and ``null`` are ids like any other.
    A file that is not UTF-8 is read as Latin-1 (logged) unless ``encoding`` says.

    Parameters
    ----------
    path : str or Path
        CSV/TSV (separator sniffed from the first line) or Parquet.
    user_col, item_col, time_col, value_col : str, optional
        Column names; recognised when not given.
    weighting, half_life_days
        See :class:`Interactions`.
    time_unit : {"D", "s", "ms", "us", "ns"}, optional
        Unit of a numeric time column; by default told from the magnitude of its
        largest value (Unix seconds, milliseconds, microseconds or nanoseconds).
    date_format : str, optional
        ``strftime`` format of a text time column (``"%d/%m/%Y"``). Needed when
        the day/month order of dates like ``01/02/2018`` can't be told from the
        data; when it can (a day above 12), the order used is logged.
    sep : str, optional
        Field separator.
    header : bool
        The first line names the columns; with ``header=False`` give ``columns``.
    columns : sequence of str, optional
        Names of the file's columns, in order (replaces the header line if any).
    encoding : str, optional
        Text encoding; default UTF-8 with a Latin-1 fallback.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        An empty file, unrecognised columns, a bad row (named), an ambiguous date.

    Examples
    --------
    >>> data = load_interactions("data/transactions.csv")  # doctest: +SKIP
    >>> ml = load_interactions("u.data", weighting="value")  # doctest: +SKIP
    >>> plays = load_interactions("plays.tsv", header=False,
    ...                           columns=["user", "item", "plays"], weighting="log1p")
    ... # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"interaction log not found: {path}")
    if time_unit is not None and time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit must be one of {TIME_UNITS}, got {time_unit!r}")
    if not header and not columns:
        raise ValueError(f"{path}: without a header line, name the columns "
                         "(columns=[...], --columns user,item,...)")
    frame = _read_table(path, sep, header, columns, encoding)
    named_time, named_value = time_col is not None, value_col is not None
    try:
        user_col, item_col, time_col, value_col = pick_columns(
            frame, user_col, item_col, time_col, value_col)
        # a recognised time or value column that does not hold times or weights is left out
        if time_col is not None and not named_time:
            time_col = _usable(path, time_col, lambda c: _time_column(frame, c, time_unit,
                                                                      date_format))
        if value_col is not None and not named_value:
            value_col = _usable(path, value_col, lambda c: _value_column(frame, c))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
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
            date_format=date_format,
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    source = {"path": str(path), "rows": len(frame), "columns": [user_col, item_col, time_col,
              value_col]}
    return Interactions(data.events, data.user_ids, data.item_ids, weighting, half_life_days,
                        source)


def pick_columns(
    frame: pd.DataFrame, user_col: str | None = None, item_col: str | None = None,
    time_col: str | None = None, value_col: str | None = None,
) -> tuple[str, str, str | None, str | None]:
    """The named columns, with the unnamed ones recognised by their names.

    Examples
    --------
    >>> pick_columns(pd.DataFrame(columns=["User", "item", "plays"]))
    ('User', 'item', None, 'plays')
    """
    by_lower = {str(c).lower(): c for c in reversed(list(frame.columns))}
    taken = {c for c in (user_col, item_col, time_col, value_col) if c is not None}

    def find(names: Sequence[str]) -> str | None:
        for name in names:
            col = by_lower.get(name)
            if col is not None and col not in taken:
                taken.add(col)
                return col
        return None

    user_col = user_col or find(USER_COLUMNS)
    item_col = item_col or find(ITEM_COLUMNS)
    if user_col is None or item_col is None:
        raise ValueError(
            f"can't tell the {'user' if user_col is None else 'item'} column from "
            f"{list(frame.columns)}; name it with user_col=/item_col= (--user-col/--item-col)"
            + ("" if len(frame.columns) > 1 else
               "; the file may have another separator (sep=, --sep)"))
    return user_col, item_col, time_col or find(TIME_COLUMNS), value_col or find(VALUE_COLUMNS)


def _usable(path: Path, col: str, check: Callable[[str], object]) -> str | None:
    try:
        check(col)
    except ValueError as err:
        if "day/month" in str(err):  # times after all: the order must be given
            raise
        log.warning("%s: ignoring column %r (%s); name it with time_col=/value_col= "
                    "(--time-col/--value-col) to use it", path, col, err)
        return None
    return col


def _read_table(path: Path, sep: str | None, header: bool, columns: Sequence[str] | None,
                encoding: str | None) -> pd.DataFrame:
    if path.suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
        if columns:
            frame.columns = list(columns)
        return frame
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: no header, no rows")
    is_movielens = path.name == "u.data" or path.suffix in (".base", ".test")
    if is_movielens and not columns:
        sep, header, columns = sep or "\t", False, MOVIELENS_NAMES
    for attempt in ([encoding] if encoding else ["utf-8", "latin-1"]):
        try:
            with path.open(encoding=attempt) as f:
                head = f.readline()
            sep = sep or ("\t" if "\t" in head else ";" if head.count(";") > head.count(",")
                          else ",")
            n_fields = len(head.rstrip("\r\n").split(sep))
            if columns and len(columns) != n_fields:
                raise ValueError(f"{path} has {n_fields} columns in its first line, but "
                                 f"{len(columns)} names were given: {list(columns)}")
            # text only: ids keep leading zeros, and NA/null are ids, not missing values
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                                na_values=[], encoding=attempt,
                                header=0 if header else None,
                                names=list(columns) if columns else None)
        except UnicodeDecodeError as err:
            if encoding:
                raise ValueError(f"{path} is not {encoding} text ({err}); pass the file's "
                                 "encoding") from None
            continue
        except pd.errors.ParserError as err:
            raise ValueError(f"{path}: can't parse as a {sep!r}-separated table: "
                             f"{' '.join(str(err).split())}") from None
        except pd.errors.EmptyDataError:
            raise ValueError(f"{path} is empty: no header, no rows") from None
        if attempt != "utf-8" and not encoding:
            log.warning("%s is not UTF-8; read it as Latin-1 (pass encoding= to choose)", path)
        return frame
    raise AssertionError("latin-1 decodes any byte")


def _id_column(frame: pd.DataFrame, col: str) -> np.ndarray:
    series = frame[col]
    bad = series.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"row {row}: missing {col!r} ({int(bad.sum())} rows lack it)")
    if pd.api.types.is_float_dtype(series) and (series == series.round()).all():
        series = series.astype(np.int64)  # Parquet ints with a gap come back as floats
    values = series.astype(str).str.strip().to_numpy()
    empty = values == ""
    if empty.any():
        raise ValueError(f"row {int(np.flatnonzero(empty)[0])}: empty {col!r}")
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    if len(lengths) and lengths.max() > MAX_ID_LENGTH:
        row = int(lengths.argmax())
        raise ValueError(f"row {row}: {col!r} value {values[row][:40]!r}... is "
                         f"{lengths[row]} characters long; ids may have at most "
                         f"{MAX_ID_LENGTH} (is {col!r} the id column?)")
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


def _time_column(frame: pd.DataFrame, col: str | None, unit: str | None,
                 date_format: str | None = None) -> pd.Series:
    if col is None:
        return pd.Series(pd.NaT, index=range(len(frame)), dtype="datetime64[ns]")
    raw = frame[col].reset_index(drop=True)
    numbers = pd.to_numeric(raw, errors="coerce")
    if date_format is None and (unit is not None or numbers.notna().all()):
        unit = unit or _unit_from_magnitude(numbers)
        parsed = pd.to_datetime(numbers, unit=unit, errors="coerce")
    else:
        text = raw.astype(str)
        date_format = date_format or _date_order(text, col)
        with warnings.catch_warnings():  # unparseable rows are reported below, by row
            warnings.simplefilter("ignore", UserWarning)
            parsed = pd.to_datetime(text, format=date_format, errors="coerce")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        hint = f" with format {date_format!r}" if date_format else ""
        raise ValueError(f"row {row}: can't read {col!r} value {raw.iloc[row]!r} as a "
                         f"time{hint}")
    return parsed.astype("datetime64[ns]")


def _unit_from_magnitude(numbers: pd.Series) -> str:
    """Unix epoch unit of numeric times, from the largest value.

    Seconds until 5138, then milli-, micro-, nanoseconds (each covers the same span).
    """
    largest = float(numbers.abs().max()) if len(numbers) else 0.0
    for unit, limit in (("s", 1e11), ("ms", 1e14), ("us", 1e17)):
        if largest < limit:
            return unit
    return "ns"


def _date_order(text: pd.Series, col: str) -> str | None:
    """A format for dates like ``01/02/2018``, or None for other text.

    The order is taken from the data when one field exceeds 12 somewhere; when
    none does, the dates are ambiguous and an explicit format is required.
    """
    parts = text.str.extract(_SLASHED_DATE)
    if parts[0].isna().any():
        return None  # not all of that shape: ISO dates and the like need no help
    first, second = parts[0].astype(int), parts[1].astype(int)
    sep = text.iloc[0].strip()[len(parts[0].iloc[0])]
    year = "%Y" if len(parts[2].iloc[0]) == 4 else "%y"
    day_first, month_first = (first > 12).any(), (second > 12).any()
    if day_first == month_first:
        example = text.iloc[0].strip()
        raise ValueError(
            f"{col!r}: dates like {example!r} can be day/month or month/day"
            + (" (both appear)" if day_first else "")
            + f"; give the order with date_format= (--date-format '%d{sep}%m{sep}{year}' or "
            f"'%m{sep}%d{sep}{year}')")
    fmt = f"%d{sep}%m{sep}{year}" if day_first else f"%m{sep}%d{sep}{year}"
    row = int(np.flatnonzero((first > 12 if day_first else second > 12).to_numpy())[0])
    log.warning("%r: reading dates as %s (row %d has %r); pass date_format= to override",
                col, fmt, row, text.iloc[row])
    return fmt + ("" if text.str.strip().str.len().max() <= len(fmt) + 2 else " %H:%M:%S")


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
