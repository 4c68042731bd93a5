"""The one rule for reading a CSV/TSV table of images, used by `medhash encode` inputs
(medhash_sdk.inputs) and by training and evaluation data (medhash_sdk.datasets).

* Format: comma-separated (``.tsv``: tab-separated), UTF-8 with or without a BOM, a header row.
  Cells are stripped of surrounding blanks.
* Path column: the one named by the caller, else the first header (case-insensitive) among
  PATH_COLUMNS, else the first column whose first 50 values all end with an image extension.
* Paths: absolute as written, or relative to the table's folder; a relative path that does not
  exist there is looked up by file name under that folder (NIH's Data_Entry table lists file
  names, and the images sit in images_001/ ... subfolders), only when exactly one file has
  that name. A path found neither way stays as written (the reader reports it).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

from .exceptions import MedhashError
from .readers import IMAGE_SUFFIXES

PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_path", "image_index", "image index")


class TableError(MedhashError):
    """A table of images cannot be used: unreadable, empty, or missing a column it needs."""


@dataclass
class Table:
    """The rows of an image table, its columns, and the column holding the image paths."""

    source: str
    columns: list[str]
    rows: list[dict[str, str]]
    path_column: str
    _by_name: dict[str, list[str]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    def resolve(self, written: str) -> str:
        """The file a path cell names (module docstring: as written, relative, or by name)."""
        p = os.path.expanduser(written)
        if os.path.isabs(p):
            return p
        base = os.path.dirname(self.source)
        direct = os.path.join(base, p)
        if os.path.exists(direct):
            return direct
        found = self._names().get(os.path.basename(p), [])
        return found[0] if len(found) == 1 else direct

    def paths(self) -> list[str]:
        """resolve() of every row's path cell, in row order."""
        return [self.resolve(r[self.path_column]) for r in self.rows]

    def _names(self) -> dict[str, list[str]]:
        if self._by_name is None:   # one walk, only when some relative path is not where written
            self._by_name = {}
            for dirpath, dirnames, filenames in os.walk(os.path.dirname(self.source) or "."):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in filenames:
                    if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                        self._by_name.setdefault(name, []).append(os.path.join(dirpath, name))
        return self._by_name


def read_table(path: str | os.PathLike[str], *, path_column: str | None = None) -> Table:
    """Read an image table (module docstring); TableError when it cannot be used."""
    source = os.fspath(path)
    delimiter = "\t" if source.lower().endswith(".tsv") else ","
    try:
        with open(source, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            columns = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except UnicodeDecodeError as e:
        raise TableError(f"{source}: not a UTF-8 text table ({e.reason})") from e
    except csv.Error as e:
        raise TableError(f"{source}: not a readable CSV table ({e})") from e
    if not columns:
        raise TableError(f"{source}: empty table (no header row)")
    if path_column is None:
        path_column = _find_path_column(columns, rows)
        if path_column is None:
            raise TableError(f"{source}: no path column (looked for {', '.join(PATH_COLUMNS)} and for image file "
                             f"names); its columns are {columns}: name one with --path-column")
    elif path_column not in columns:
        raise TableError(f"{source}: no path column {path_column!r}; its columns are {columns}")
    for line, row in enumerate(rows, start=2):
        if not row.get(path_column):
            raise TableError(f"{source}, line {line}: empty {path_column!r}")
    return Table(os.path.abspath(source), columns, rows, path_column)


def _find_path_column(columns: list[str], rows: list[dict[str, str]]) -> str | None:
    lower = {c.lower(): c for c in columns}
    named = next((lower[c] for c in PATH_COLUMNS if c in lower), None)
    if named is not None or not rows:
        return named
    return next((c for c in columns
                 if all(os.path.splitext(r.get(c, ""))[1].lower() in IMAGE_SUFFIXES for r in rows[:50])), None)
