"""The medhash CLI: encode -> index build -> search (--json, --explain), exit statuses, demo."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from _models import tiny_model
from medhash_sdk.cli import main
from medhash_sdk.codes import brute_force_search
from medhash_sdk.encoder import Encoder, default_model_path
from medhash_sdk.exceptions import ModelFileError
from medhash_sdk.index import Index
from medhash_sdk.metrics import map_at_k
from _data import NIH_PNG_DIR, requires_data

DATA = NIH_PNG_DIR
SAMPLES = Path(__file__).resolve().parents[1] / "medhash_sdk" / "assets" / "samples"
PNGS = sorted(DATA.glob("*.png"))
pytestmark = requires_data(len(PNGS) >= 16, f"real NIH PNGs not found in {DATA}")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("models")
    tiny_model(d / "tiny.onnx")
    tiny_model(d / "other.onnx", seed=3)
    return d / "tiny.onnx", d / "other.onnx"


@pytest.fixture(scope="module")
def built(tmp_path_factory, models):
    """16 real radiographs (downsized) + one broken file, encoded, indexed."""
    root = tmp_path_factory.mktemp("cli")
    imgs = root / "imgs"
    imgs.mkdir()
    rows = []
    for i, p in enumerate(PNGS[:16]):
        im = cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (160, 160), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(imgs / p.name), im)
        rows.append([f"imgs/{p.name}", "1" if i % 3 == 0 else "0", "1" if i % 4 == 0 else "0"])
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    rows.append(["imgs/broken.png", "0", "0"])
    with open(root / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "Effusion", "Mass"])
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def indexed(built, models):
    """`medhash encode` of the cases (shard size 5) and `medhash index build`, once per module:
    (exit status and stderr of encode, exit status of index build)."""
    import contextlib
    import io

    model, _ = models
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["encode", str(built / "cases.csv"), "--out", str(built / "shards"), "--model", str(model),
                   "--shard-size", "5", "--batch-size", "4", "--workers", "2", "--no-progress", "--providers", "cpu"])
        rc_build = main(["index", "build", str(built / "shards"), "--out", str(built / "codes.idx"),
                         "--model", str(model)])
    return rc, err.getvalue(), rc_build


def test_encode_index_search_json_explain(built, models, indexed, capsys):
    model, _ = models
    out = built / "shards"
    rc, err, rc_build = indexed
    assert rc == 3, err                                   # finished, one input failed
    assert "16 of 17 inputs encoded into 4 shards" in err and "1 inputs failed" in err
    with open(out / "errors.csv", newline="") as f:
        assert [r["id"] for r in csv.DictReader(f)] == ["imgs/broken.png"]
    idx_path = built / "codes.idx"
    assert rc_build == 0, err
    assert main(["index", "info", str(idx_path), "--verify"]) == 0
    assert "16 codes of 64 bits" in capsys.readouterr().out

    queries = [built / "imgs" / PNGS[1].name, built / "imgs" / PNGS[6].name]
    assert main(["search", "--index", str(idx_path), "--model", str(model), *map(str, queries), "-k", "4", "--json",
                 "--explain", str(built / "explain"), "--providers", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    # the same answer as encoding the queries and brute-forcing the index's codes
    enc = Encoder(model, providers="cpu")
    index = Index.load(idx_path)
    ids = list(index.ids)
    rows, dist = brute_force_search(enc.encode(queries), index.get_codes(ids), 4)
    for r, row, drow in zip(res["results"], rows, dist):
        assert [m["id"] for m in r["matches"]] == [ids[j] for j in row]
        assert [m["distance"] for m in r["matches"]] == drow.tolist()
        first = r["matches"][0]
        assert set(first["labels"]) == {"Effusion", "Mass"} and Path(first["path"]).is_file()
        sheet = cv2.imread(r["contact_sheet"])
        assert sheet is not None and sheet.shape[1] > 4 * 256     # query + 4 matches side by side
    assert res["results"][0]["matches"][0]["distance"] == 0      # the query itself is in the index
    assert res["results"][0]["matches"][0]["id"] == f"imgs/{PNGS[1].name}"
    # the table form names the labels; an unreadable query gives exit status 3
    rc = main(["search", "--index", str(idx_path), "--model", str(model), str(queries[0]),
               str(built / "imgs" / "broken.png"), "-k", "2", "--providers", "cpu"])
    cap = capsys.readouterr()
    assert rc == 3 and "1 of 2 queries could not be read" in cap.err
    assert f"distance   0  imgs/{PNGS[1].name}" in cap.out


def test_model_mismatch_and_unfinished_refused(built, models, indexed, capsys, tmp_path):
    model, other = models
    out = built / "shards"
    idx_path = built / "codes.idx"
    assert indexed[2] == 0
    rc = main(["search", "--index", str(idx_path), "--model", str(other), str(built / "imgs" / PNGS[0].name),
               "--providers", "cpu"])
    assert rc == 1 and "model" in capsys.readouterr().err
    rc = main(["index", "build", str(out), "--out", str(tmp_path / "x.idx"), "--model", str(other)])
    assert rc == 1 and "cannot share an index" in capsys.readouterr().err
    rc = main(["encode", str(built / "cases.csv"), "--out", str(out), "--model", str(other), "--shard-size", "5",
               "--no-progress", "--providers", "cpu"])
    assert rc == 1 and "codes of two models cannot be mixed" in capsys.readouterr().err
    # an interrupted job (manifest still 'running') cannot be indexed yet
    part = tmp_path / "part"
    shutil.copytree(out, part)
    m = json.loads((part / "manifest.json").read_text())
    m["status"] = "running"
    (part / "manifest.json").write_text(json.dumps(m))
    assert main(["index", "build", str(part), "--out", str(tmp_path / "y.idx")]) == 1
    assert "unfinished" in capsys.readouterr().err
    assert main(["encode", "--ray", str(built / "imgs"), "--out", str(tmp_path / "z")]) == 2
    assert "--ray=ADDRESS" in capsys.readouterr().err


def test_index_build_sort_by_code(built, models, indexed, tmp_path):
    """--sort-by-code writes the same ids and codes as the plain build, rows in code order."""
    assert indexed[2] == 0
    sorted_path = tmp_path / "sorted.idx"
    assert main(["index", "build", str(built / "shards"), "--out", str(sorted_path), "--sort-by-code"]) == 0
    plain, ordered = Index.load(built / "codes.idx"), Index.load(sorted_path)
    ids = list(plain.ids)
    order = sorted(range(len(ids)), key=lambda i: (plain.codes[i].tobytes(), i))
    assert list(ordered.ids) == [ids[i] for i in order]
    np.testing.assert_array_equal(ordered.codes, plain.codes[order])
    assert sorted_path.with_name("sorted.idx.sources.csv").is_file()


def test_demo_with_a_test_model(models, tmp_path, capsys):
    model, _ = models
    assert main(["demo", "--model", str(model), "--out", str(tmp_path / "demo"), "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "mAP over the 10 samples" in out and (tmp_path / "demo" / "contact_sheet.png").is_file()
    # the printed mAP is the leave-one-out mAP of the model's codes, computed independently here
    enc = Encoder(model, providers="cpu")
    with open(SAMPLES / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = [c for c in rows[0] if c not in ("file", "image_index", "patient_id")]
    flags = np.array([[int(r[c]) for c in names] for r in rows])
    flags = np.concatenate([flags, (flags.sum(1, keepdims=True) == 0)], axis=1)
    codes = enc.encode([SAMPLES / r["file"] for r in rows])
    n = len(rows)
    bits = np.unpackbits(codes, axis=1).astype(int)
    d = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    rel = flags @ flags.T
    off = ~np.eye(n, dtype=bool)
    want = map_at_k(d[off].reshape(n, n - 1), rel[off].reshape(n, n - 1), k=None)
    assert f"{want:.3f}" in out
    assert out.count("  1. distance") == n                       # every sample searched
    # searched against the others: a sample never matches itself first
    lines = out.splitlines()
    for r in rows:
        at = next(i for i, line in enumerate(lines) if line.startswith(r["file"] + "  ["))
        assert lines[at + 1].startswith("  1. distance") and r["file"] not in lines[at + 1]


def test_demo_without_bundled_model_says_why(tmp_path, capsys, monkeypatch):
    import medhash_sdk.encoder as encoder_mod

    monkeypatch.setattr(encoder_mod, "ASSETS", tmp_path / "no-assets")   # an install without the model
    with pytest.raises(ModelFileError):
        default_model_path()
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 1
    assert "no trained default model is bundled" in capsys.readouterr().err


def test_demo_runs_with_no_arguments_on_the_bundled_model(tmp_path, capsys, monkeypatch):
    """The README's first command: `medhash demo`, nothing else, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "mAP over the 10 samples" in out
    sheet = tmp_path / "medhash-demo" / "contact_sheet.png"
    image = cv2.imread(str(sheet))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 400


def test_missing_files_are_clean_errors(tmp_path, capsys):
    assert main(["search", "--index", str(tmp_path / "none.idx"), str(tmp_path / "q.png")]) == 1
    err = capsys.readouterr().err
    assert "none.idx" in err and "Traceback" not in err
    assert main(["encode", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 1
    assert "nothing" in capsys.readouterr().err


def test_bad_arguments_are_one_line_errors(capsys, monkeypatch):
    """A ValueError from a command's argument checks is one line and exit 2, not a traceback."""
    from medhash_sdk.cli import main as cli_main

    monkeypatch.delenv("MEDHASH_DEBUG", raising=False)
    rc = cli_main(["eval", "--model", "no.onnx", "--data", "no.npz", "--k", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--k: expected an integer >= 1, got '0'" in err and "Traceback" not in err
    for argv in (["search", "--index", "x.idx", "q.png", "-k", "0"], ["encode", "in", "--out", "o", "--batch-size", "-1"],
                 ["demo", "-k", "zero"], ["train", "--data", "d.npz", "--out", "o", "--split-fractions", "0.5,0.6,0"]):
        assert cli_main(argv) == 2, argv
        assert "error: argument" in capsys.readouterr().err


def test_training_commands_without_torch_print_the_install_hint(capsys, monkeypatch):
    """The training package's commands import torch lazily; without it the CLI says what to
    install (exit 2) instead of a traceback."""
    import sys

    from medhash_sdk.cli import main as cli_main

    for name in [m for m in sys.modules if m == "medhash_train" or m.startswith("medhash_train.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)     # import torch -> ImportError(name="torch")
    rc = cli_main(["export", "ck.pt", "--out", "m.onnx"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install torch==2.13.0" in err and "medhash export" in err


def test_training_commands_come_from_the_plugin_group(capsys, monkeypatch):
    """The runtime CLI names no training module: train/export are entry points of the group
    medhash.commands; without the training distribution they are unknown, with a hint."""
    from medhash_sdk import cli

    assert {ep.name for ep in cli._plugin_commands()} >= {"train", "export"}
    monkeypatch.setattr(cli, "_plugin_commands", lambda: [])
    rc = cli.main(["train", "--data", "x.npz", "--out", "o"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install ./export" in err and "Traceback" not in err
    assert "eval" in cli.build_parser().get_default("command_names")


def test_eval_needs_no_torch(monkeypatch):
    """`medhash eval` scores a model file with numpy and the Encoder: importing it with torch
    unavailable works."""
    import importlib
    import sys

    for name in [m for m in sys.modules if m.startswith(("medhash_sdk.evaluation", "medhash_sdk.datasets",
                                                         "medhash_sdk.commands.eval"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)
    importlib.import_module("medhash_sdk.commands.eval")
    importlib.import_module("medhash_sdk.evaluation")
