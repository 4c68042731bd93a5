"""The Ray Data path on a local Ray instance: same shards and codes as a local run, same resume."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'medhash-sdk[dist]')")

from _models import tiny_model  # noqa: E402
from medhash_sdk.batch import ShardDir, ShardDirError, encode_to_shards  # noqa: E402
from medhash_sdk.cli import main  # noqa: E402
from medhash_sdk.distributed import encode_with_ray  # noqa: E402
from medhash_sdk.exceptions import ModelMismatchError  # noqa: E402
from _data import NIH_PNG_DIR, requires_data

DATA = NIH_PNG_DIR
PNGS = sorted(DATA.glob("*.png"))
pytestmark = requires_data(len(PNGS) >= 20, f"real NIH PNGs not found in {DATA}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    tiny_model(root / "tiny.onnx")
    tiny_model(root / "other.onnx", seed=5)
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    for i, p in enumerate(PNGS[:20]):   # 20 real radiographs, a few in a subfolder
        im = cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (256, 256), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(data / ("sub" if i % 4 == 0 else "") / p.name), im)
    (data / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    clean = root / "clean"
    encode_to_shards([data], clean, model=root / "tiny.onnx", providers="cpu", shard_size=6, batch_size=4,
                     show_progress_bar=False)
    return root, data, clean


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard-*"))}


def test_cli_ray_local_instance_equals_local_run(setup, capsys):
    root, data, clean = setup
    assert not ray.is_initialized()
    out = root / "cli"
    rc = main(["encode", str(data), "--out", str(out), "--model", str(root / "tiny.onnx"), "--shard-size", "6",
               "--batch-size", "4", "--providers", "cpu", "--no-progress", "--ray"])
    err = capsys.readouterr().err
    assert rc == 3, err                       # one broken input, listed like a local run's
    assert "20 of 21 inputs encoded into 4 shards" in err
    assert files(out) == files(clean)         # byte for byte: codes, ids, sidecars
    assert (out / "errors.csv").read_bytes() == (clean / "errors.csv").read_bytes()
    assert not ray.is_initialized()           # the instance it started is shut down


def test_ray_resumes_a_local_run_and_refuses_other_models(setup):
    root, data, clean = setup
    out = root / "resume"
    encode_to_shards([data], out, model=root / "tiny.onnx", providers="cpu", shard_size=6, batch_size=4,
                     show_progress_bar=False)
    sd = ShardDir(out)
    keep = os.stat(sd.shard_path(0, "idx")).st_mtime_ns
    for i in (1, 3):                              # as if the run had been killed
        os.unlink(sd.shard_path(i, "idx"))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        s = encode_with_ray([data], out, model=root / "tiny.onnx", providers="cpu", shard_size=6, batch_size=4,
                            num_actors=2, show_progress_bar=False)
        assert (s.n_resumed, s.n_shards, s.n_failed) == (2, 4, 1)
        assert os.stat(sd.shard_path(0, "idx")).st_mtime_ns == keep
        assert files(out) == files(clean)
        with pytest.raises(ModelMismatchError):
            encode_with_ray([data], out, model=root / "other.onnx", providers="cpu", shard_size=6,
                            show_progress_bar=False)
        with pytest.raises(ShardDirError, match="shard size"):
            encode_with_ray([data], out, model=root / "tiny.onnx", providers="cpu", shard_size=5,
                            show_progress_bar=False)
        assert ray.is_initialized()               # a caller's Ray is left running
    finally:
        ray.shutdown()
