"""Atomic file writes and memoised content digests, shared by every cache and report."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

_CHUNK = 1 << 20
# (resolved path, size, mtime_ns) -> hex digest; a file rewritten in place gets a new entry.
_DIGESTS: dict[tuple[str, int, int], str] = {}


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` and rename it over ``path`` on success.

    Readers see the old file or the complete new one, never a part: the temporary
    file is flushed and fsynced, and lives in the same folder so ``os.replace`` is
    an atomic rename. On an exception it is removed and ``path`` is untouched.
    Parent folders are created; the file gets mode 0644 (not mkstemp's 0600).

    Parameters
    ----------
    path : str or os.PathLike
        Final destination.
    mode : {"wb", "w"}
        Binary or text (UTF-8).

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "sub" / "a.txt"
    >>> with atomic_write(p, "w") as f:
    ...     _ = f.write("hello")
    >>> p.read_text()
    'hello'
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see `atomic_write`); returns the path."""
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, memoised on (path, size, modification time).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist (the message names it).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> file_sha256(f.name)[:16]
    'ba7816bf8f01cfea'
    """
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"file not found: {path}") from None
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(resolved, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        digest = _DIGESTS[key] = h.hexdigest()
    return digest


def write_npz_atomic(path: str | os.PathLike[str], arrays: dict[str, Any]) -> Path:
    """Save ``arrays`` as an uncompressed ``.npz`` atomically; returns the path."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return Path(path)


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Fill a temporary folder beside ``path``, then swap it in for ``path``.

    A reader sees the old folder or the complete new one; on an exception the
    temporary folder is removed and ``path`` is untouched.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "model"
    >>> with atomic_directory(target) as tmp:
    ...     _ = (tmp / "a.json").write_text("{}")
    >>> sorted(p.name for p in target.iterdir())
    ['a.json']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_meta(folder: str | os.PathLike[str], name: str, kind: str, version: int) -> dict:
    """The JSON file ``folder/name`` of a saved ``kind``, checked to be format ``version``.

    Raises
    ------
    FileNotFoundError
        If the file is missing (``folder`` holds no saved ``kind``).
    ValueError
        If it was written in another format version.
    """
    meta_file = Path(folder) / name
    if not meta_file.is_file():
        raise FileNotFoundError(f"no saved {kind} at {folder} ({name} missing)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != version:
        raise ValueError(f"{folder}: unsupported {kind} format {meta.get('format')}")
    return meta
