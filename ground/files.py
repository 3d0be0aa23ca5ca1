"""Atomic file writes and memoised content digests, shared by every cache and report."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

log = logging.getLogger(__name__)

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


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (and ``root``), so a rename publishes data."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _leftovers(path: Path, kind: str) -> list[Path]:
    """Hidden siblings a save of ``path`` leaves when killed: ``kind`` is tmp, new or old."""
    return sorted(path.parent.glob(f".{path.name}.{kind}.*"), key=lambda p: p.stat().st_mtime)


def saved_directory(path: str | os.PathLike[str], marker: str) -> Path:
    """``path``, or the complete copy a save killed between its renames left beside it.

    `atomic_directory` renames a fully written ``.NAME.new.*`` folder into place after
    moving the old folder to ``.NAME.old.*``. A crash between the two renames leaves
    no ``path``; this finishes the swap (the new copy wins, else the old one comes back)
    and returns ``path``. When the folder cannot be renamed (read-only), the copy is
    read where it lies.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "model"
    >>> (target.parent / ".model.new.x").mkdir()
    >>> _ = (target.parent / ".model.new.x" / "m.json").write_text("{}")
    >>> saved_directory(target, "m.json") == target, sorted(p.name for p in target.iterdir())
    (True, ['m.json'])
    """
    path = Path(path)
    if path.exists() or not path.parent.is_dir():
        return path
    for kind in ("new", "old"):
        for copy in reversed(_leftovers(path, kind)):
            if not (copy / marker).is_file():
                continue
            log.warning("%s is missing: a save was interrupted; restoring %s", path, copy.name)
            try:
                os.rename(copy, path)
            except FileExistsError:  # another reader restored it first
                return path
            except OSError:
                return copy
            _fsync_dir(path.parent)
            return path
    return path


@contextmanager
def atomic_directory(path: str | os.PathLike[str], marker: str) -> Iterator[Path]:
    """Fill a temporary folder beside ``path``, then swap it in for ``path``.

    A reader sees the old folder or the complete new one; on an exception the
    temporary folder is removed and ``path`` is untouched. Only a folder we wrote
    may be replaced: ``path`` must be absent, an empty folder, or a folder holding
    ``marker`` (the saved object's metadata file); anything else (a user's folder, a
    file, a link) raises `FileExistsError` and nothing is touched.

    Every file is fsynced before the swap. The swap is two renames (old folder to
    ``.NAME.old.*``, the complete ``.NAME.new.*`` to ``path``); if the process dies
    between them, `saved_directory` finds the complete copy, and the next save here
    removes whatever an interrupted save left.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "model"
    >>> with atomic_directory(target, "a.json") as tmp:
    ...     _ = (tmp / "a.json").write_text("{}")
    >>> sorted(p.name for p in target.iterdir())
    ['a.json']
    """
    path = Path(os.path.abspath(path))
    if not path.name or path == Path.cwd() or path in Path.cwd().parents:
        raise FileExistsError(f"refusing to save into {path}: name a new folder to hold the "
                              "saved files")
    check_replaceable(path, marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved_directory(path, marker)  # an interrupted save's complete copy comes back first
    for kind in ("tmp", "new", "old"):
        for leftover in _leftovers(path, kind):
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp.", dir=path.parent))
    try:
        yield tmp
        if not (tmp / marker).is_file():
            raise RuntimeError(f"save into {path} wrote no {marker}")
        check_replaceable(path, marker)  # the folder may have changed while we wrote
        _fsync_tree(tmp)
        suffix = tmp.name.rpartition(".tmp.")[2]
        new = path.parent / f".{path.name}.new.{suffix}"
        os.rename(tmp, new)
        tmp = new
        old = path.parent / f".{path.name}.old.{suffix}"
        if path.exists():
            os.rename(path, old)
            _fsync_dir(path.parent)
        os.rename(new, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable(path: str | os.PathLike[str], marker: str) -> None:
    """Raise `FileExistsError` unless a save may put a folder at ``path``: it is absent,
    an empty folder, or a folder holding ``marker`` (a save of ours)."""
    path = Path(path)
    if path.is_symlink():
        raise FileExistsError(f"refusing to replace {path}: it is a symbolic link; "
                              "save to a real folder")
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"refusing to replace {path}: it is a file, not a saved model; "
                              "choose another output path")
    if (path / marker).is_file() or not any(path.iterdir()):
        return
    raise FileExistsError(f"refusing to replace {path}: the folder holds files but no saved "
                          f"model ({marker} missing); choose a new or empty folder")


def read_meta(folder: str | os.PathLike[str], name: str, kind: str,
              version: int | Collection[int]) -> dict:
    """The JSON file ``folder/name`` of a saved ``kind``, checked to be format ``version``.

    ``version`` may be a collection of the format versions the caller reads.

    Raises
    ------
    FileNotFoundError
        If the file is missing (``folder`` holds no saved ``kind``).
    ValueError
        If it is not valid JSON or was written in another format version.
    """
    meta_file = Path(folder) / name
    if not meta_file.is_file():
        raise FileNotFoundError(f"no saved {kind} at {folder} ({name} missing)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta_file} is damaged ({err}); save the {kind} again") from None
    versions = (version,) if isinstance(version, int) else tuple(version)
    if not isinstance(meta, dict) or meta.get("format") not in versions:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{folder}: unsupported {kind} format {found}")
    return meta


def pack_strings(strings: Sequence[str]) -> dict[str, np.ndarray]:
    """Strings as one UTF-8 byte array and their end offsets (no pickle, no padding).

    Fixed-width numpy unicode costs 4 bytes × the longest string for every
    string; this costs the UTF-8 bytes of each. `unpack_strings` reverses it.

    Examples
    --------
    >>> packed = pack_strings(["a", "ü", ""])
    >>> packed["utf8"].tolist(), packed["ends"].tolist()
    ([97, 195, 188], [1, 3, 3])
    >>> unpack_strings(packed["utf8"], packed["ends"]).tolist()
    ['a', 'ü', '']
    """
    encoded = [str(s).encode("utf-8") for s in strings]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
    return {"utf8": np.frombuffer(b"".join(encoded), dtype=np.uint8), "ends": ends}


def unpack_strings(utf8: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The string array `pack_strings` packed (numpy unicode)."""
    blob = np.asarray(utf8, dtype=np.uint8).tobytes()
    ends = np.asarray(ends, dtype=np.int64)
    if len(ends) and (ends[-1] != len(blob) or (np.diff(ends) < 0).any() or ends[0] < 0):
        raise ValueError("packed strings are damaged: offsets do not match the bytes")
    starts = np.concatenate(([0], ends[:-1])) if len(ends) else ends
    return np.array([blob[a:b].decode("utf-8") for a, b in zip(starts, ends, strict=True)],
                    dtype=str)
