"""Encoder on ONNX Runtime CPU with a tiny exported-model fixture and real NIH radiographs."""
from __future__ import annotations

import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from _dicom_files import make_dataset, save
from _models import reference, tiny_model
from medhash_sdk import encoder as encoder_mod
from medhash_sdk.backends.onnxruntime import CPU, CUDA, TRT, provider_list
from medhash_sdk.encoder import Encoder
from medhash_sdk.exceptions import ImageReadError, ModelFileError, UnsupportedImageError
from medhash_sdk.preprocessing import preprocess_batch
from _data import NIH_PNG_DIR, requires_data

DATA = NIH_PNG_DIR
PNGS = sorted(DATA.glob("*.png"))[:12]
pytestmark = requires_data(bool(PNGS), f"real NIH PNGs not found in {DATA}")



@pytest.fixture(scope="module")
def enc(model) -> Encoder:
    return Encoder(model, providers="cpu")


@pytest.fixture(scope="module")
def arrays() -> list[np.ndarray]:
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in PNGS]


def test_metadata_and_reference(enc, arrays):
    assert (enc.nbits, enc.input_size, len(enc.labels)) == (64, 64, 14)
    assert enc.provider == CPU and len(enc.fingerprint) == 64 and enc.card.method == "tiny-test-fixture"
    codes = enc.encode(arrays)
    assert codes.dtype == np.uint8 and codes.shape == (len(arrays), 8)
    ref = reference(preprocess_batch(arrays, enc.card.preprocessing))["code_logits"]
    sure = np.abs(ref) > 1e-4   # bits whose sign float rounding cannot flip
    bits = np.unpackbits(codes, axis=1).astype(bool)
    assert np.array_equal(bits[sure], (ref > 0)[sure]) and sure.mean() > 0.99
    assert len({c.tobytes() for c in codes}) == len(codes)  # different radiographs, different codes


def test_files_arrays_mixed_and_batch_sizes_agree(enc, arrays):
    files = enc.encode(PNGS)
    np.testing.assert_array_equal(files, enc.encode(arrays))
    mixed = [PNGS[0], arrays[1], str(PNGS[2])]
    np.testing.assert_array_equal(enc.encode(mixed), files[:3])
    for bs in (1, 5, 64):
        np.testing.assert_array_equal(enc.encode(PNGS, batch_size=bs), files)
    np.testing.assert_array_equal(enc.encode(PNGS[3]), files[3:4])       # one path -> one row
    np.testing.assert_array_equal(enc.encode(arrays[3]), files[3:4])     # one array -> one image
    assert enc.encode([]).shape == (0, 8)
    single = Encoder(enc.model_path, providers="cpu", workers=1)
    np.testing.assert_array_equal(single.encode(PNGS, batch_size=5), files)


def test_other_pixel_types(enc, arrays, tmp_path):
    a = arrays[0]
    rgb = np.repeat(a[:, :, None], 3, axis=2)
    u16 = a.astype(np.uint16) * 257
    f = a.astype(np.float32) / 255
    cv2.imwrite(str(tmp_path / "x16.png"), u16)
    out = enc.encode([a, rgb, f, tmp_path / "x16.png"])
    # same picture in four encodings: identical codes up to min-max of the 16-bit file
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])
    assert (np.unpackbits(out[0]) != np.unpackbits(out[3])).sum() <= 2
    with pytest.raises(ValueError, match="list of arrays"):
        enc.encode(np.stack(arrays[:2]))


def test_errors_name_the_input(enc, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(PNGS[0].read_bytes()[:5000])
    with pytest.raises(ImageReadError, match="bad.png.*truncated PNG"):
        enc.encode([PNGS[0], bad, PNGS[1]], batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(PNGS, batch_size=0)
    with pytest.raises(TypeError, match="inputs"):
        enc.encode(42)
    with pytest.raises(TypeError):
        enc.encode([42])


def test_thread_safe_identical_codes(enc):
    serial = enc.encode(PNGS, batch_size=4)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(2):
                results.append(enc.encode(PNGS, batch_size=4))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 8
    for r in results:
        np.testing.assert_array_equal(r, serial)


def test_fixed_batch_model_is_split_and_padded(tmp_path, enc, arrays):
    tiny_model(tmp_path / "b4.onnx", batch=4)
    e4 = Encoder(tmp_path / "b4.onnx", providers="cpu")
    assert e4.card.fingerprint == enc.fingerprint
    np.testing.assert_array_equal(e4.encode(arrays[:7], batch_size=5), enc.encode(arrays[:7]))


def test_channels3_model_and_other_sizes(tmp_path, arrays):
    tiny_model(tmp_path / "c3.onnx", nbits=32, input_size=32, channels=3, seed=3)
    e = Encoder(tmp_path / "c3.onnx", providers="cpu")
    codes = e.encode(arrays[:3])
    assert codes.shape == (3, 4)
    ref = reference(preprocess_batch(arrays[:3], e.card.preprocessing), nbits=32, seed=3)["code_logits"]
    sure = np.abs(ref) > 1e-4
    assert np.array_equal(np.unpackbits(codes, axis=1).astype(bool)[sure], (ref > 0)[sure])


def test_analyze_dicom_facts_and_strict(enc, tmp_path, arrays):
    small = cv2.resize(arrays[0], (256, 256), interpolation=cv2.INTER_AREA)
    chest = save(make_dataset(small.astype(np.uint16) * 16, bits_stored=12), tmp_path / "chest.dcm")
    mr = save(make_dataset(small.astype(np.uint16) * 16, bits_stored=12, Modality="MR", BodyPartExamined="HEAD"),
              tmp_path / "mr.dcm")
    res = enc.analyze([chest, PNGS[0], mr])
    assert len(res) == 3 and res.probabilities.shape == (3, 14) and res.attention.shape == (3, 8, 8)
    np.testing.assert_allclose(res.attention.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert ((res.probabilities > 0) & (res.probabilities < 1)).all()
    assert res.facts[0]["modality"] == "CR" and res.facts[0]["view"] == "PA" and res.notes[0] == []
    assert res.facts[1]["format"] == "png" and "not DICOM" in res.notes[1][0]
    assert any("modality MR" in n for n in res.notes[2]) and any("HEAD" in n for n in res.notes[2])
    np.testing.assert_array_equal(res.codes, enc.encode([chest, PNGS[0], mr]))
    assert res.sources[1] == str(PNGS[0]) and res.top_labels(0, 2)[0][0] in enc.labels
    with pytest.raises(UnsupportedImageError, match="mr.dcm.*strict"):
        enc.analyze([chest, mr], strict=True)
    assert len(enc.analyze([chest, PNGS[0]], strict=True)) == 2


def test_model_file_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelFileError, match="not found"):
        Encoder(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="cannot load"):
        Encoder(tmp_path / "junk.onnx")
    import onnx

    tiny_model(tmp_path / "t.onnx")
    m = onnx.load(str(tmp_path / "t.onnx"))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "nocard.onnx"))
    with pytest.raises(ModelFileError, match="no medhash metadata"):
        Encoder(tmp_path / "nocard.onnx")
    with pytest.raises(TypeError):
        Encoder(123)  # type: ignore[arg-type]
    monkeypatch.setattr(encoder_mod, "ASSETS", tmp_path)
    with pytest.raises(ModelFileError, match="no trained default model is bundled"):
        Encoder()


def test_default_model_is_bundled_and_documented():
    assert (encoder_mod.ASSETS / encoder_mod.DEFAULT_MODEL).is_file(), "the wheel must ship the default model"
    e = Encoder()
    assert e.card.training and e.card.metrics, "the bundled model must carry its training data and figures"
    assert all("/" not in s for s in e.card.training.get("data_sources", [])), "no local paths in a shipped model"


def test_providers_and_session_options(model):
    with pytest.raises(ValueError, match="providers"):
        Encoder(model, providers="gpu-please")
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        with pytest.raises(ValueError, match="not available"):
            Encoder(model, providers="cuda")
    e = Encoder(model, providers="auto", threads=1)
    assert e.provider == ort.get_available_providers()[0] or e.provider == CPU
    so = e._backend.session.get_session_options()
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.intra_op_num_threads == 1
    card = e.card
    plist = provider_list("auto", [TRT, CUDA, CPU], card)
    assert [p if isinstance(p, str) else p[0] for p in plist] == [TRT, CUDA, CPU]
    trt_opts = plist[0][1]
    assert trt_opts["trt_engine_cache_enable"] == "True" and card.fingerprint[:16] in trt_opts["trt_engine_cache_path"]
    assert provider_list("auto", [CPU], card) == [CPU]


def test_missing_onnxruntime_gives_install_hint(model):
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "import medhash_sdk\n"
            f"try:\n    medhash_sdk.Encoder({str(model)!r})\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "medhash-sdk[cpu]" in out.stdout and "medhash-sdk[gpu]" in out.stdout, out.stderr


@pytest.mark.slow
def test_real_exported_paper_net_matches_torch(tmp_path):
    """The paper network exported by medhash_train: Encoder codes from PNG files == torch codes."""
    torch = pytest.importorskip("torch", reason="torch (the training extra) is needed to export the paper net")
    onnx_export = pytest.importorskip("medhash_train.onnx_export", reason="medhash_train.onnx_export not available")
    from medhash_train.attention import NetConfig, build_model

    from medhash_sdk.preprocessing import Preprocessing

    torch.manual_seed(0)
    labels = [f"label{i}" for i in range(15)]
    model = build_model(NetConfig(nbits=64, num_labels=len(labels), width=0.25))
    with torch.no_grad():   # non-trivial BatchNorm statistics
        model.train()
        model(torch.randn(8, 1, 64, 64))
    spec = Preprocessing(input_size=64)
    card = onnx_export.export_onnx(model, spec, labels, "attention-untrained", tmp_path / "paper.onnx")
    enc = Encoder(tmp_path / "paper.onnx", providers="cpu")
    assert enc.fingerprint == card.fingerprint
    res = enc.analyze(PNGS, batch_size=5)
    x = preprocess_batch([cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in PNGS], spec)
    model.eval()
    with torch.no_grad():
        u, probs, attn = (t.numpy() for t in model(torch.from_numpy(x)))
    bits = np.unpackbits(res.codes, axis=1).astype(bool)
    assert (bits == (u > 0)).mean() >= 0.999
    np.testing.assert_allclose(res.probabilities, probs, atol=1e-4)
    np.testing.assert_allclose(res.attention, attn.reshape(res.attention.shape), atol=1e-4)


def test_codes_carry_the_fingerprint_into_an_index(enc, arrays):
    index_mod = pytest.importorskip("medhash_sdk.index", reason="Index (issue 2) not built")
    codes = enc.encode(PNGS)
    idx = index_mod.Index(enc.nbits, fingerprint=enc.fingerprint)
    idx.add(codes, ids=[p.name for p in PNGS], fingerprint=enc.fingerprint)
    res = idx.search(enc.encode(arrays[4]), k=1)
    assert int(np.asarray(res.distances).ravel()[0]) == 0
    with pytest.raises(Exception, match="(?i)fingerprint|model"):
        idx.add(codes, fingerprint="0" * 64)


def test_cpu_batch_split_across_threads_gives_the_same_outputs():
    """On CPU a batch runs as `threads` concurrent parts: same codes and probabilities as one run."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 80), dtype=np.uint8) for _ in range(7)] + [str(p) for p in PNGS[:3]]
    one = Encoder(providers="cpu", threads=1)
    three = Encoder(providers="cpu", threads=3)
    assert three._backend._parts == 3 and one._backend._parts == 1
    np.testing.assert_array_equal(one.encode(images, batch_size=10), three.encode(images, batch_size=10))
    a, b = one.analyze(images), three.analyze(images)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
