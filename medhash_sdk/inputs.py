"""Finding the images of a bulk job, in a fixed order, each with a stable id.

An INPUT is a directory (walked recursively), an image file, a text file of paths (``.txt``,
``.lst``: one path a line, ``#`` comments, relative paths taken from the list's folder) or a
CSV/TSV file with a path column (and optionally an id column and label columns).

* Order: INPUTs in the order given; inside a directory, files sorted by relative path; list
  and CSV files in their row order. The same command always yields the same sequence, which
  is what makes fixed shard numbering (and so resuming) possible.
* Id: the path relative to the INPUT it came from (POSIX separators; for a file given on its
  own, its name; for a list or CSV row, the path as written there), or the CSV's id column.
  Two items with the same id are refused: an index needs unique ids.
* Directories: files with an image extension (PNG, JPEG, TIFF, BMP, DICOM) are taken; other
  files are taken when they start like a DICOM file (``DICM`` at byte 128), since DICOM files
  often have no extension. Hidden files and folders (``.name``) are skipped.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .exceptions import MedhashError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".dic", ".ima"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom", ".dic", ".ima"})
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
TABLE_EXTENSIONS = frozenset({".csv", ".tsv"})
PATH_COLUMNS = ("path", "file", "filename", "image", "image_path")


class InputError(MedhashError):
    """An INPUT is missing, empty, or a list/CSV file that cannot be used."""


@dataclass(frozen=True)
class Item:
    """One image to encode: its id, the path to read, decoder kind and label values."""

    id: str
    path: str
    kind: str  # "dicom" or "image": decides the decode pool (processes or threads)
    labels: tuple[str, ...] = ()


@dataclass
class Inputs:
    """The discovered images, in their fixed order, and the names of their label columns."""

    items: list[Item]
    label_columns: tuple[str, ...] = ()
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def digest(self) -> str:
        """SHA-256 over ids, relative paths and labels in order: identifies the job's inputs.

        Uses ids (relative to their INPUT) rather than absolute paths, so a data set moved to
        another mount still resumes.
        """
        h = hashlib.sha256()
        h.update(json.dumps(list(self.label_columns)).encode())
        for it in self.items:
            h.update(json.dumps([it.id, list(it.labels)], ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()


def is_dicom_file(path: str) -> bool:
    """True if the file has the DICOM preamble marker ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _kind(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in DICOM_EXTENSIONS:
        return "dicom"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return "dicom" if is_dicom_file(path) else "image"


def _walk(root: str) -> Iterable[Item]:
    found: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            found.append((rel, full))
    for rel, full in sorted(found):
        ext = os.path.splitext(rel)[1].lower()
        if ext in IMAGE_EXTENSIONS:
            yield Item(rel, full, "dicom" if ext in DICOM_EXTENSIONS else "image")
        elif ext not in LIST_EXTENSIONS | TABLE_EXTENSIONS and is_dicom_file(full):
            yield Item(rel, full, "dicom")


def _resolve(base: str, p: str) -> str:
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else os.path.join(base, p)


def _read_list(path: str) -> Iterable[Item]:
    base = os.path.dirname(path)
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            full = _resolve(base, line)
            yield Item(os.path.normpath(line).replace(os.sep, "/"), full, _kind(full))


def _read_table(path: str, path_column: str | None, id_column: str | None,
                label_columns: Sequence[str] | None) -> tuple[list[Item], tuple[str, ...]]:
    base = os.path.dirname(path)
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = list(reader.fieldnames or [])
        if path_column is None:
            path_column = next((c for c in PATH_COLUMNS if c in columns), None)
            if path_column is None:
                raise InputError(f"{path}: no path column (looked for {', '.join(PATH_COLUMNS)}); "
                                 f"its columns are {columns}: name one with --path-column")
        for name, what in ((path_column, "path"), (id_column, "id")):
            if name is not None and name not in columns:
                raise InputError(f"{path}: no {what} column {name!r}; its columns are {columns}")
        if label_columns is None:
            labels = tuple(c for c in columns if c not in (path_column, id_column))
        else:
            missing = [c for c in label_columns if c not in columns]
            if missing:
                raise InputError(f"{path}: no label column(s) {missing}; its columns are {columns}")
            labels = tuple(label_columns)
        items = []
        for row_no, row in enumerate(reader, start=2):
            p = (row.get(path_column) or "").strip()
            if not p:
                raise InputError(f"{path}, line {row_no}: empty {path_column!r}")
            full = _resolve(base, p)
            item_id = (row.get(id_column) or "").strip() if id_column else os.path.normpath(p).replace(os.sep, "/")
            if not item_id:
                raise InputError(f"{path}, line {row_no}: empty id column {id_column!r}")
            items.append(Item(item_id, full, _kind(full), tuple((row.get(c) or "").strip() for c in labels)))
    return items, labels


def discover(inputs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], *,
             path_column: str | None = None, id_column: str | None = None,
             label_columns: Sequence[str] | None = None) -> Inputs:
    """Expand INPUTs (directories, image files, path lists, CSV files) into ordered Items.

    Raises InputError for a missing INPUT, a CSV without the named columns, duplicate ids, or
    no image at all. Label columns come from CSV INPUTs; when several CSVs are given they must
    have the same label columns.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("give at least one INPUT: a directory, an image, a list of paths or a CSV file")
    items: list[Item] = []
    labels: tuple[str, ...] | None = None
    for raw in inputs:
        src = os.fspath(raw)
        if os.path.isdir(src):
            found = list(_walk(src))
            if not found:
                raise InputError(f"{src}: no image files in this directory")
            items.extend(found)
            continue
        if not os.path.exists(src):
            raise InputError(f"{src}: no such file or directory")
        ext = os.path.splitext(src)[1].lower()
        if ext in TABLE_EXTENSIONS:
            rows, cols = _read_table(src, path_column, id_column, label_columns)
            if labels is not None and cols != labels:
                raise InputError(f"{src}: label columns {list(cols)} differ from an earlier CSV's {list(labels)}")
            labels = cols
            items.extend(rows)
        elif ext in LIST_EXTENSIONS:
            items.extend(_read_list(src))
        else:
            items.append(Item(os.path.basename(src), src, _kind(src)))
    if not items:
        raise InputError("no images found in " + ", ".join(os.fspath(p) for p in inputs))
    labels = labels or ()
    if labels:  # items from non-CSV inputs get empty label values
        items = [it if len(it.labels) == len(labels) else Item(it.id, it.path, it.kind, ("",) * len(labels))
                 for it in items]
    seen: dict[str, str] = {}
    for it in items:
        if it.id in seen:
            raise InputError(f"two inputs have the id {it.id!r}: {seen[it.id]} and {it.path}; "
                             "ids must be unique (an id is the path relative to its INPUT: give the "
                             "folders' common parent as the INPUT, or a CSV with an id column)")
        seen[it.id] = it.path
    return Inputs(items, labels, [os.fspath(p) for p in inputs])
