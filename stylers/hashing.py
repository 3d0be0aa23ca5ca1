"""Content hashes of files, used to key the render cache and to identify weights."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20
# (resolved path, size, mtime_ns) -> hex digest; a file rewritten in place gets a new entry.
_SEEN: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, memoised on (path, size, modification time).

    Parameters
    ----------
    path : str or os.PathLike
        The file to hash.

    Returns
    -------
    str
        64 lowercase hex characters.

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
    digest = _SEEN.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(resolved, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        digest = _SEEN[key] = h.hexdigest()
    return digest
