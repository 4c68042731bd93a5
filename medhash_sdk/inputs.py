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
* Directories: files with the extension of a format the readers decode
  (medhash_sdk.readers.IMAGE_SUFFIXES: PNG, JPEG, TIFF, DICOM) are taken; other files are
  taken when they start like a DICOM file (``DICM`` at byte 128), since DICOM files often have
  no extension. Hidden files and folders (``.name``) are skipped. Linked folders are followed,
  each folder walked once (links back up the tree would list images again, or loop).
* CSV/TSV tables are read by the one table rule of medhash_sdk.tables (path column, relative
  paths), shared with training data.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .exceptions import MedhashError
from .readers import DICOM_SUFFIXES, IMAGE_SUFFIXES, is_dicom_file
from .tables import TableError, read_table

LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
TABLE_EXTENSIONS = frozenset({".csv", ".tsv"})


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


def _kind(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in DICOM_SUFFIXES:
        return "dicom"
    if ext in IMAGE_SUFFIXES:
        return "image"
    return "dicom" if is_dicom_file(path) else "image"


def _inside_walk(target: str, root_real: str) -> bool:
    """True if the walk of root_real reaches the real directory target by itself (it lies
    under root_real, through no hidden folder)."""
    if target == root_real:
        return True
    if not target.startswith(root_real.rstrip(os.sep) + os.sep):
        return False
    return not any(part.startswith(".") for part in os.path.relpath(target, root_real).split(os.sep))


def _walk(root: str) -> Iterable[Item]:
    """Every image under root once. Linked folders are followed, except those the walk reaches
    by their own path (each image keeps that id) or has walked already: a link back up the
    tree (``latest -> ..``) would otherwise list the same images again at every depth, or
    without end where two such links branch."""
    found: list[tuple[str, str]] = []
    root_real = os.path.realpath(root)
    walked: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:  # vanished or unreadable since it was listed
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in walked:
            dirnames[:] = []
            continue
        walked.add((st.st_dev, st.st_ino))
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if d.startswith(".") or (os.path.islink(full) and _inside_walk(os.path.realpath(full), root_real)):
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            found.append((rel, full))
    for rel, full in sorted(found):
        ext = os.path.splitext(rel)[1].lower()
        if ext in IMAGE_SUFFIXES:
            yield Item(rel, full, "dicom" if ext in DICOM_SUFFIXES else "image")
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
    try:
        table = read_table(path, path_column=path_column)
    except TableError as e:
        raise InputError(str(e)) from e
    columns = table.columns
    if id_column is not None and id_column not in columns:
        raise InputError(f"{path}: no id column {id_column!r}; its columns are {columns}")
    if label_columns is None:
        labels = tuple(c for c in columns if c not in (table.path_column, id_column))
    else:
        missing = [c for c in label_columns if c not in columns]
        if missing:
            raise InputError(f"{path}: no label column(s) {missing}; its columns are {columns}")
        labels = tuple(label_columns)
    items = []
    for line, (row, full) in enumerate(zip(table.rows, table.paths()), start=2):
        written = row[table.path_column]
        item_id = row.get(id_column, "") if id_column else os.path.normpath(written).replace(os.sep, "/")
        if not item_id:
            raise InputError(f"{path}, line {line}: empty id column {id_column!r}")
        items.append(Item(item_id, full, _kind(full), tuple(row.get(c, "") for c in labels)))
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
