"""The one table rule (medhash_sdk.tables) as seen by `medhash encode` inputs and by training
data, and input discovery taking exactly the formats the readers decode."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from medhash_sdk.datasets import load_dataset
from medhash_sdk.inputs import InputError, discover
from medhash_sdk.readers import IMAGE_SUFFIXES, read_image
from medhash_sdk.tables import TableError, read_table


@pytest.fixture()
def folder(tmp_path):
    """A table beside images_001/ and images_002/ subfolders, NIH style (file names only)."""
    rng = np.random.default_rng(0)
    for sub, names in (("images_001", ["a.png", "b.png"]), ("images_002", ["c.png"])):
        (tmp_path / sub).mkdir()
        for n in names:
            cv2.imwrite(str(tmp_path / sub / n), rng.integers(0, 255, (40, 40), dtype=np.uint8))
    (tmp_path / "labels.csv").write_text(
        "\ufeffImage Index , Effusion,Mass,Patient ID\n"
        "a.png,1,0,p1\nb.png,0,1,p1\nimages_002/c.png,0,0,p2\nmissing.png,1,1,p3\n", encoding="utf-8")
    return tmp_path


def test_one_rule_for_inputs_and_training_data(folder):
    table = read_table(folder / "labels.csv")
    assert table.path_column == "Image Index" and table.columns[1] == "Effusion"   # BOM and blanks gone
    paths = table.paths()
    assert paths[0] == str(folder / "images_001" / "a.png")        # found by name under the folder
    assert paths[2] == str(folder / "images_002" / "c.png")        # relative to the table
    assert paths[3] == str(folder / "missing.png")                 # left as written: the reader says why
    items = discover(folder / "labels.csv").items
    assert [it.path for it in items] == paths
    assert [it.id for it in items] == ["a.png", "b.png", "images_002/c.png", "missing.png"]
    ds = load_dataset(str(folder / "labels.csv"))
    assert list(ds.images) == paths[:3] and ds.info["formats"] == ["csv"]   # rows without an image dropped
    assert ds.label_names == ["Effusion", "Mass", "No Finding"] and list(ds.patient_id) == ["p1", "p1", "p2"]


def test_name_lookup_needs_a_unique_file(folder):
    (folder / "images_002" / "a.png").write_bytes((folder / "images_001" / "a.png").read_bytes())
    assert read_table(folder / "labels.csv").paths()[0] == str(folder / "a.png")   # ambiguous: as written


def test_table_errors(tmp_path):
    (tmp_path / "t.csv").write_text("accession,label\nA1,1\n")
    with pytest.raises(TableError, match="no path column"):
        read_table(tmp_path / "t.csv")
    (tmp_path / "e.csv").write_text("path,label\n,1\n")
    with pytest.raises(TableError, match="line 2: empty 'path'"):
        read_table(tmp_path / "e.csv")
    (tmp_path / "b.csv").write_bytes(b"path\n\xff\xfe\x00bad\n")
    with pytest.raises(TableError, match="not a UTF-8"):
        read_table(tmp_path / "b.csv")


def test_discovery_takes_what_the_readers_read(tmp_path):
    img = np.full((20, 20), 128, np.uint8)
    for ext in (".png", ".jpg", ".tif", ".bmp", ".gif", ".webp"):
        cv2.imwrite(str(tmp_path / f"x{ext}"), img)
    found = {it.id for it in discover(tmp_path).items}
    assert found == {"x.png", "x.jpg", "x.tif"}
    assert {".bmp", ".gif", ".webp"}.isdisjoint(IMAGE_SUFFIXES)
    for name in found:
        assert read_image(tmp_path / name).pixels.shape == (20, 20)
    with pytest.raises(InputError, match="no image files"):
        discover(tmp_path / "none") if (tmp_path / "none").mkdir() is None else None
