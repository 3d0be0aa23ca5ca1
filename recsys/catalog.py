"""The product catalog: item id → image path, confined to one root directory."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

# what PIL decodes (a GIF's first frame is the image)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class Catalog:
    """Maps item ids to image files under ``root``.

    Paths are stored relative to ``root``; absolute paths and paths that resolve
    outside the root (``..``, symlinks) are refused, so a catalog file can never
    make the library read arbitrary files. A folder scan
    (:meth:`from_directory`) skips a file that escapes (a symbolic link out of
    the root) and records it in ``skipped``; the rest of the catalog stays usable.

    Examples
    --------
    >>> catalog = Catalog.from_directory("data/images")  # doctest: +SKIP
    >>> catalog.path("0108775015")  # doctest: +SKIP
    PosixPath('/.../data/images/010/0108775015.jpg')
    """

    def __init__(self, root: str | Path, paths: Mapping[str, str | Path]) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"catalog root is not a directory: {root}")
        self._paths: dict[str, Path] = {}
        self.skipped: dict[str, str] = {}
        for item_id, rel in paths.items():
            self._paths[str(item_id)] = self._confine(str(item_id), Path(rel))

    @classmethod
    def from_directory(
        cls, root: str | Path, pattern: str = "**/*", suffixes: Iterable[str] = IMAGE_SUFFIXES
    ) -> Catalog:
        """Every image under ``root`` matching ``pattern``; the id is the file stem.

        The H&M layout ``images/<3 digits>/<article_id>.jpg`` works as is.
        Two files with the same stem are an error (the id would be ambiguous).
        """
        root = Path(root)
        if not root.is_dir():
            raise NotADirectoryError(f"image folder not found: {root}")
        allowed = {s.lower() for s in suffixes}
        paths: dict[str, Path] = {}
        skipped: dict[str, str] = {}
        resolved_root = root.resolve()
        for path in sorted(root.glob(pattern)):
            if path.suffix.lower() not in allowed or not path.is_file():
                continue
            if not path.resolve().is_relative_to(resolved_root):
                skipped[path.stem] = f"{path} resolves outside {resolved_root}"
                log.warning("skipping item %s: %s", path.stem, skipped[path.stem])
                continue
            if path.stem in paths:
                raise ValueError(
                    f"two images for item {path.stem!r}: {paths[path.stem]} and "
                    f"{path.relative_to(root)}"
                )
            paths[path.stem] = path.relative_to(root)
        if not paths:
            raise ValueError(f"no images ({', '.join(sorted(allowed))}) matching {pattern!r} "
                             f"under {root}")
        catalog = cls(root, paths)
        catalog.skipped = skipped
        return catalog

    @classmethod
    def from_csv(
        cls, csv_path: str | Path, root: str | Path, item_col: str = "item_id",
        path_col: str = "image_path",
    ) -> Catalog:
        """A CSV with one row per item: its id and its image path relative to ``root``."""
        frame = pd.read_csv(csv_path, dtype=str)
        missing = [c for c in (item_col, path_col) if c not in frame.columns]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {missing}")
        dup = frame[item_col].duplicated()
        if dup.any():
            row = int(dup.to_numpy().nonzero()[0][0])
            raise ValueError(f"{csv_path}: row {row}: item {frame[item_col].iloc[row]!r} repeated")
        return cls(root, dict(zip(frame[item_col], frame[path_col], strict=True)))

    def _confine(self, item_id: str, rel: Path) -> Path:
        if rel.is_absolute():
            raise ValueError(f"item {item_id!r}: image path {rel} must be relative to the root")
        full = (self.root / rel).resolve()
        if not full.is_relative_to(self.root):
            raise ValueError(f"item {item_id!r}: image path {rel} escapes the root {self.root}")
        return full

    def path(self, item_id: str) -> Path:
        """Absolute path of an item's image; KeyError names an unknown id."""
        try:
            return self._paths[str(item_id)]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in the catalog") from None

    def relative_path(self, item_id: str) -> Path:
        return self.path(item_id).relative_to(self.root)

    @property
    def item_ids(self) -> list[str]:
        return list(self._paths)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._paths

    def __len__(self) -> int:
        return len(self._paths)

    def __repr__(self) -> str:
        return f"Catalog({len(self)} items under {self.root})"
