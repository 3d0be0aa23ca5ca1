"""A durable log of shopper feedback (impressions, clicks, purchases) in SQLite.

The log is one SQLite database in WAL mode with ``synchronous=FULL``: when
:meth:`FeedbackLog.append` returns, the events' transaction is on disk (the WAL
is fsynced at commit), so a process killed right after loses nothing it
acknowledged, and a crash mid-write leaves the last committed state. Several
processes (service workers) may append to and read one file; SQLite serialises
the writers.

Events
------
``uid``, ``item``: external ids (printable, at most :data:`MAX_ID_LENGTH` characters);
``type``: one of :data:`EVENT_TYPES`; ``ts``: when it happened (Unix seconds,
the client's clock; the server's when absent); ``variant``: the experiment arm
the shopper saw; ``position``: 1-based rank in the slate shown; ``event_id``:
an optional client id that makes retries idempotent (a repeated id is stored
once). The log adds ``received``, the server's clock at append time.

Examples
--------
>>> import tempfile, pathlib
>>> log = FeedbackLog(pathlib.Path(tempfile.mkdtemp()) / "feedback.db")
>>> log.append([Event.parse({"uid": "u1", "item": "i9", "type": "click", "ts": 1.5e9})])
1
>>> [(e["uid"], e["item"], e["type"]) for e in log.user_events(["u1"])["u1"]]
[('u1', 'i9', 'click')]
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase")
ENGAGEMENTS = ("click", "add_to_cart", "purchase")  # what says something about taste
MAX_ID_LENGTH = 128
MAX_VARIANT_LENGTH = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    uid TEXT NOT NULL,
    item TEXT NOT NULL,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    received REAL NOT NULL,
    variant TEXT,
    position INTEGER,
    event_id TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (uid, received);
"""
_COLUMNS = ("uid", "item", "type", "ts", "received", "variant", "position", "event_id")


def check_id(value: Any, name: str, max_length: int = MAX_ID_LENGTH) -> str:
    """``value`` as an id: a non-empty printable string of at most ``max_length`` characters.

    Raises
    ------
    ValueError
        Naming ``name`` and what is wrong.

    Examples
    --------
    >>> check_id("0108775015", "item")
    '0108775015'
    >>> check_id("a\\nb", "uid")
    Traceback (most recent call last):
    ...
    ValueError: uid must be printable (no control characters)
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}"[:200])
    if len(value) > max_length:
        raise ValueError(f"{name} is {len(value)} characters long; the limit is {max_length}")
    if not value.isprintable():
        raise ValueError(f"{name} must be printable (no control characters)")
    return value


@dataclass(frozen=True)
class Event:
    """One validated feedback event (see the module docstring for the fields)."""

    uid: str
    item: str
    type: str
    ts: float
    variant: str | None = None
    position: int | None = None
    event_id: str | None = None

    @classmethod
    def parse(cls, raw: Any, now: float | None = None) -> Event:
        """Validate a JSON object; ``ts`` may be Unix seconds or an ISO-8601 string.

        Raises
        ------
        ValueError
            Naming the field at fault.
        """
        if not isinstance(raw, Mapping):
            raise ValueError(f"an event must be a JSON object, got {type(raw).__name__}")
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown event field(s) {sorted(unknown)}")
        kind = raw.get("type")
        if kind not in EVENT_TYPES:
            raise ValueError(f"type must be one of {list(EVENT_TYPES)}, got {kind!r}"[:200])
        position = raw.get("position")
        if position is not None and (isinstance(position, bool) or not isinstance(position, int)
                                     or not 1 <= position <= 10_000):
            raise ValueError(f"position must be an integer from 1 to 10000, got {position!r}")
        variant, event_id = raw.get("variant"), raw.get("event_id")
        return cls(
            uid=check_id(raw.get("uid"), "uid"),
            item=check_id(raw.get("item"), "item"),
            type=kind,
            ts=_timestamp(raw.get("ts"), time.time() if now is None else now),
            variant=None if variant is None else check_id(variant, "variant",
                                                          MAX_VARIANT_LENGTH),
            position=position,
            event_id=None if event_id is None else check_id(event_id, "event_id"),
        )


def _timestamp(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"ts must be Unix seconds or ISO-8601, got {value!r}"[:200]) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        value = parsed.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 <= value < 1e11:
        raise ValueError(f"ts must be Unix seconds or ISO-8601, got {value!r}"[:200])
    return float(value)


class FeedbackLog:
    """Append-only feedback events in a SQLite file (WAL, ``synchronous=FULL``).

    Thread-safe: appends are serialised within the process (and by SQLite
    across processes); each thread reads through its own connection.

    Parameters
    ----------
    path : str or Path
        The database file; created (with its folder) when absent.
    timeout : float
        Seconds to wait for another process's write lock before failing.
    """

    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        with self._write_lock:
            self._connection().executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def append(self, events: Sequence[Event], received: float | None = None) -> int:
        """Store ``events`` in one transaction, durable on return.

        Returns
        -------
        int
            Events stored (an ``event_id`` already in the log is not stored again).
        """
        received = time.time() if received is None else received
        rows = [(e.uid, e.item, e.type, e.ts, received, e.variant, e.position, e.event_id)
                for e in events]
        conn = self._connection()
        with self._write_lock:
            before = conn.total_changes
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    f"INSERT OR IGNORE INTO events ({', '.join(_COLUMNS)}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return conn.total_changes - before

    def user_events(self, uids: Sequence[str], types: Iterable[str] = EVENT_TYPES,
                    since: float = 0.0, limit: int = 1000) -> dict[str, list[sqlite3.Row]]:
        """Each user's latest ``limit`` events of ``types`` received after ``since``.

        Returns
        -------
        dict
            uid -> rows (oldest first; ``_COLUMNS`` and the log position ``seq``), for
            the users that have any.
        """
        types, uids = tuple(types), list(dict.fromkeys(uids))
        rows = self._connection().execute(
            f"SELECT seq, {', '.join(_COLUMNS)} FROM events WHERE received > ? "
            f"AND uid IN ({', '.join('?' * len(uids))}) "
            f"AND type IN ({', '.join('?' * len(types))}) ORDER BY seq",
            (since, *uids, *types)).fetchall()
        out: dict[str, list[sqlite3.Row]] = {}
        for row in rows:
            out.setdefault(row["uid"], []).append(row)
        return {uid: events[-limit:] for uid, events in out.items()}

    def count(self) -> int:
        """Events in the log."""
        return int(self._connection().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def event_ids(self) -> set[str]:
        """Every client ``event_id`` in the log."""
        rows = self._connection().execute(
            "SELECT event_id FROM events WHERE event_id IS NOT NULL")
        return {r[0] for r in rows}

    def integrity(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: ``"ok"`` for an intact database."""
        return "; ".join(r[0] for r in self._connection().execute("PRAGMA integrity_check"))

    def to_frame(self) -> pd.DataFrame:
        """Every event, in log order, as a data frame (one column per field)."""
        rows = self._connection().execute(
            f"SELECT {', '.join(_COLUMNS)} FROM events ORDER BY seq").fetchall()
        return pd.DataFrame([tuple(r) for r in rows], columns=list(_COLUMNS))

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
