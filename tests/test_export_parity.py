"""ONNX export of a small trained-looking network: metadata, dynamic batch, and parity of
ONNX Runtime (CPU) with torch on real NIH radiographs (>= 99.9% of bits, probabilities 1e-4)."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from medhash_sdk.codes import pack_codes  # noqa: E402
from medhash_sdk.model_card import INPUT_NAME, OUTPUT_NAMES, ModelCard  # noqa: E402
from medhash_sdk.preprocessing import Preprocessing, preprocess_batch  # noqa: E402
from medhash_train.attention import NetConfig, build_model  # noqa: E402
from medhash_train.onnx_export import export_onnx, export_random, model_fingerprint, onnx_outputs  # noqa: E402
from _data import SHARED_DATA, missing_data

DATA = str(SHARED_DATA / "nih1000_64.npz")


@pytest.fixture(scope="module")
def nih():
    if not os.path.exists(DATA):
        missing_data(f"real NIH data not found at {DATA}")
    z = np.load(DATA)
    return z["images"][:128], z["labels"][:128]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, nih):
    torch.manual_seed(0)
    images, _ = nih
    model = build_model(NetConfig(nbits=64, num_labels=15, width=0.25))
    spec = Preprocessing(input_size=64)
    x = torch.from_numpy(preprocess_batch(list(images), spec))
    model.train()
    with torch.no_grad():          # realistic BatchNorm statistics from real images
        for _ in range(3):
            model(x)
    model.eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    labels = [f"l{i}" for i in range(14)] + ["No Finding"]
    card = export_onnx(model, spec, labels, "attention", path,
                       training={"data_fingerprint": "abc", "split": {"rule": "patient", "seed": 0}, "seed": 1})
    return model, spec, labels, card, str(path), x


def test_single_file_with_metadata(exported):
    model, spec, labels, card, path, _ = exported
    proto = onnx.load(path, load_external_data=False)
    assert not [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert os.listdir(os.path.dirname(path)) == ["model.onnx"]
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    assert any(op.domain in ("", "ai.onnx") and op.version == 18 for op in proto.opset_import)
    meta = {p.key: p.value for p in proto.metadata_props}
    back = ModelCard.from_metadata(meta)
    assert back.nbits == 64 and back.preprocessing == spec and back.labels == labels
    assert back.method == "attention" and back.training["split"]["rule"] == "patient"
    assert back.fingerprint == model_fingerprint(model, spec, 64, labels) == card.fingerprint
    assert "torch" in back.versions and back.backbone.startswith("resnet18")
    # the crop and the pyramid's upsampling are matrix products, not ORT's slow GridSample/Resize
    assert not {n.op_type for n in proto.graph.node} & {"GridSample", "Resize"}


def test_ort_matches_torch_on_real_images(exported):
    model, _, _, _, path, x = exported
    with torch.no_grad():
        u, p, a = (t.numpy() for t in model(x))
    ou, op, oa = onnx_outputs(path, x.numpy())
    bits_t, bits_o = np.unpackbits(pack_codes(u), 1), np.unpackbits(pack_codes(ou), 1)
    agree = (bits_t == bits_o).mean()
    assert agree >= 0.999, f"bit agreement {agree:.5f}"
    assert np.abs(op - p).max() <= 1e-4
    assert oa.shape == a.shape and np.abs(oa - a).max() <= 1e-3
    # dynamic batch: one image and an odd batch
    assert onnx_outputs(path, x[:1].numpy())[0].shape == (1, 64)
    np.testing.assert_allclose(onnx_outputs(path, x[:7].numpy())[1], op[:7], atol=1e-5)


def test_random_export_helper(tmp_path):
    card = export_random(str(tmp_path / "r.onnx"), nbits=32, input_size=32, width=0.125)
    assert card.method == "attention-untrained" and card.nbits == 32 and len(card.labels) == 15
    u, p, a = onnx_outputs(str(tmp_path / "r.onnx"), np.zeros((3, 1, 32, 32), np.float32))
    assert u.shape == (3, 32) and p.shape == (3, 15)


def test_local_scale_export_parity(tmp_path, nih):
    """A net whose crop reads the 2x input (local_scale=2) exports whole and ORT agrees with torch."""
    torch.manual_seed(0)
    images, _ = nih
    spec = Preprocessing(input_size=128)
    x = torch.from_numpy(preprocess_batch(list(images[:32]), spec))
    model = build_model(NetConfig(nbits=32, num_labels=15, width=0.125, local_scale=2))
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    path = tmp_path / "ls2.onnx"
    card = export_onnx(model, spec, [f"l{i}" for i in range(15)], "attention", path)
    assert card.preprocessing.input_size == 128 and "1/2" in card.backbone
    with torch.no_grad():
        u, p, _ = (t.numpy() for t in model(x))
    ou, op, _ = onnx_outputs(str(path), x.numpy())
    assert ((u > 0) == (ou > 0)).mean() >= 0.999 and np.abs(op - p).max() <= 1e-4
