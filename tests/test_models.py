"""Backbones and the paper's attention network: shapes on odd sizes, the crop, the warm-up switch."""
import pytest

torch = pytest.importorskip("torch")

from unittest import mock  # noqa: E402

from medhash_train.attention import (NetConfig, attention_box, build_model, crop_resize, jitter_box, otsu_threshold,  # noqa: E402
                                     resize_bilinear)
from medhash_train.backbones import build_backbone, load_backbone_weights  # noqa: E402


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "densenet121"])
def test_backbone_levels(name):
    net = build_backbone(name, in_ch=1, width=0.125)
    f8, f16, f32 = net(torch.randn(2, 1, 64, 64))
    assert f8.shape[-1] == 8 and f16.shape[-1] == 4 and f32.shape[-1] == 2
    assert (f8.shape[1], f16.shape[1], f32.shape[1]) == net.channels


@pytest.mark.parametrize("size", [28, 64, 97, 128])
def test_attention_net_odd_sizes(size):
    torch.manual_seed(0)
    stem = "small" if size < 48 else "imagenet"
    net = build_model(NetConfig(nbits=32, num_labels=15, width=0.125, stem=stem))
    x = torch.randn(3, 1, size, size)
    u, p, a = net(x)
    assert u.shape == (3, 32) and p.shape == (3, 15) and a.dim() == 3 and a.shape[0] == 3
    assert (u.abs() < 1).all() and ((p >= 0) & (p <= 1)).all()
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    (u.sum() + p.sum()).backward()
    assert all(q.grad is not None for q in net.hash.parameters())


def test_densenet_attention_and_separate_local_branch():
    net = build_model(NetConfig(nbits=16, num_labels=3, backbone="densenet121", width=0.125, local="separate"))
    u, p, a = net(torch.randn(2, 1, 64, 64))
    assert u.shape == (2, 16) and net.local_backbone is not None


def test_otsu_separates_two_levels():
    a = torch.tensor([[0.1] * 10 + [0.9] * 6])
    t = float(otsu_threshold(a, 32)[0])
    assert 0.1 < t <= 0.9


def test_box_from_mask_min_size_and_empty_fallback():
    attn = torch.zeros(2, 8, 8)
    attn[0, 2:4, 5:7] = 1.0                      # a small blob in the upper right
    box = attention_box(attn, bins=32, min_box=0.4)
    sx, tx, sy, ty = box[0].tolist()
    assert sx == pytest.approx(0.4) and sy == pytest.approx(0.4)      # blob is 0.25 wide: min size
    assert tx == pytest.approx(2 * 0.75 - 1) and ty == pytest.approx(2 * 0.375 - 1)
    # a flat map has an empty mask: whole image
    assert box[1].tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0])


def test_moments_box_covers_a_uniform_blob_exactly_and_falls_back_like_extent():
    attn = torch.zeros(2, 8, 8)
    attn[0, 2:6, 1:4] = 1.0                      # rows 2-5, columns 1-3
    moments = attention_box(attn, bins=32, min_box=0.1, rule="moments")
    extent = attention_box(attn, bins=32, min_box=0.1, rule="extent")
    assert torch.allclose(moments, extent, atol=1e-6)
    assert moments[0].tolist() == pytest.approx([3 / 8, 2 * (2.5 / 8) - 1, 4 / 8, 2 * (4 / 8) - 1], abs=1e-6)
    assert moments[1].tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0])        # flat map: whole image


def test_moments_box_moves_less_than_the_bounding_box_when_a_far_cell_lights_up():
    """A far cell brightening slightly (0.27 -> 0.29) crosses the Otsu threshold: the bounding
    box jumps to the whole image; the moments box, continuous in the map between threshold
    jumps, moves a third as far."""
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    base = torch.exp(-((yy - 2) ** 2 + (xx - 2) ** 2) / (2 * 1.5 ** 2)).unsqueeze(0)   # a blob, upper left
    before, after = base.clone(), base.clone()
    before[0, 7, 7], after[0, 7, 7] = 0.27, 0.29
    jump = {r: (attention_box(after, 32, 0.1, r) - attention_box(before, 32, 0.1, r)).abs().max().item()
            for r in ("extent", "moments")}
    assert attention_box(after, 32, 0.1, "extent")[0].tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0])
    assert jump["extent"] > 0.3 and jump["moments"] < jump["extent"] / 3, jump


def test_box_jitter_keeps_boxes_valid_and_only_acts_in_training():
    torch.manual_seed(0)
    box = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.4, -0.6, 0.4, 0.6], [0.5, 0.2, 0.7, -0.1]]).repeat(200, 1)
    j = jitter_box(box, shift=0.125, min_box=0.4)
    size, centre = j[:, 0::2], (j[:, 1::2] + 1) / 2
    assert float(size.min()) >= 0.4 - 1e-6 and float(size.max()) <= 1.0 + 1e-6
    assert float((centre - size / 2).min()) >= -1e-6 and float((centre + size / 2).max()) <= 1.0 + 1e-6
    assert 0 < float((j - box).abs().max()) <= 0.25 + 1e-6            # edges move, at most a cell each
    net = build_model(NetConfig(nbits=16, num_labels=3, width=0.125, box_jitter=1.0))
    x = torch.randn(2, 1, 64, 64)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x)[0], net(x)[0])                       # eval (and export): no jitter


def test_weak_cam_evidence_blends_the_crop_towards_the_whole_image():
    net = build_model(NetConfig(nbits=16, num_labels=3, width=0.125, min_evidence=0.1)).eval()
    attn = torch.zeros(3, 8, 8)
    attn[:, 0, 0] = 1.0                          # a one-cell "peak": the Otsu box is the minimum box
    evidence = torch.tensor([0.0, 0.05, 0.5])    # none, half the required, plenty
    box = net.crop_box(attn, evidence)
    otsu = attention_box(attn, 32, 0.4)
    identity = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert torch.allclose(box[0], identity)
    assert torch.allclose(box[1], 0.5 * otsu[1] + 0.5 * identity)
    assert torch.allclose(box[2], otsu[2])
    x = torch.randn(2, 1, 64, 64)
    assert net.boxes(x).shape == (2, 4)


def test_box_rule_is_checked():
    with pytest.raises(ValueError, match="box must be one of"):
        NetConfig(nbits=16, num_labels=3, box="peak")
    with pytest.raises(ValueError, match="min_evidence"):
        NetConfig(nbits=16, num_labels=3, min_evidence=2.0)


def test_crop_identity_and_box():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    ident = crop_resize(x, torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    assert torch.allclose(ident, x, atol=1e-4)
    # the right half, resampled to full width
    half = crop_resize(x, torch.tensor([[0.5, 0.5, 1.0, 0.0]]))
    assert float(half[0, 0, 0, 0]) >= 3.5 and float(half[0, 0, 0, -1]) == pytest.approx(7.0, abs=0.3)


def test_exported_crop_and_resize_equal_the_eager_ops():
    """The export writes grid_sample and bilinear upsampling as matrix products: same values,
    including boxes that reach outside the image (border padding) and downsampling."""
    torch.manual_seed(0)
    x = torch.rand(5, 2, 64, 48)
    box = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.4, 0.6, 0.4, -0.6], [0.5, 0.9, 0.7, -0.5],
                        [0.9, 0.05, 0.45, 0.1], [1.0, 0.3, 1.0, -0.3]])
    eager = crop_resize(x, box)
    with mock.patch("torch.onnx.is_in_onnx_export", return_value=True):
        exported = crop_resize(x, box)
    assert torch.allclose(eager, exported, atol=1e-5)
    for src, dst in [((2, 2), (8, 8)), ((4, 3), (8, 8)), ((7, 7), (13, 13)), ((9, 9), (4, 4))]:
        f = torch.randn(3, 4, *src)
        with mock.patch("torch.onnx.is_in_onnx_export", return_value=True):
            got = resize_bilinear(f, dst)
        assert torch.allclose(resize_bilinear(f, dst), got, atol=1e-5), (src, dst)


def test_no_gradient_through_box_and_warmup_switch():
    torch.manual_seed(0)
    net = build_model(NetConfig(nbits=16, num_labels=4, width=0.125))
    x = torch.randn(2, 1, 64, 64, requires_grad=True)
    net.eval()
    net.set_crop(False)
    u0 = net(x)[0]
    net.set_crop(True)
    u1 = net(x)[0]
    assert not torch.allclose(u0, u1)       # the buffer switches the crop, same graph
    u1.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_local_weights_file(tmp_path):
    src = build_backbone("resnet18", in_ch=3, width=0.125)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = build_backbone("resnet18", in_ch=1, width=0.125, weights=str(path))
    w_src = src.stem[0].weight.sum(1, keepdim=True)
    assert torch.allclose(dst.stem[0].weight, w_src)
    with pytest.raises(ValueError, match="do not fit"):
        load_backbone_weights(build_backbone("resnet18", width=0.25), path)


def test_bad_config():
    with pytest.raises(ValueError, match="multiple of 8"):
        NetConfig(nbits=30, num_labels=3)
    with pytest.raises(ValueError, match="backbone"):
        NetConfig(nbits=32, num_labels=3, backbone="vgg")


def test_local_scale_crops_the_full_resolution_input():
    """local_scale=2: the branches see 64 px, the crop comes from the 128 px input (identity box
    = the 2 x 2 block mean, i.e. what the global branch sees); bad settings are refused."""
    torch.manual_seed(0)
    x = torch.rand(3, 1, 128, 128)
    ident = crop_resize(x, torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 3), (64, 64))
    assert torch.allclose(ident, torch.nn.functional.avg_pool2d(x, 2), atol=1e-6)
    zoom = crop_resize(x, torch.tensor([[0.5, 0.0, 0.5, 0.0]] * 3), (64, 64))   # the central half, 1:1 pixels
    assert torch.allclose(zoom, x[:, :, 32:96, 32:96], atol=1e-5)
    net = build_model(NetConfig(nbits=16, num_labels=4, width=0.125, local_scale=2)).eval()
    u, p, a = net(x)
    assert u.shape == (3, 16) and p.shape == (3, 4) and a.shape == (3, 8, 8)   # CAM on the 64 px view
    with pytest.raises(ValueError, match="local_scale"):
        NetConfig(nbits=16, num_labels=4, local_scale=0)
    with pytest.raises(ValueError, match="local branch"):
        NetConfig(nbits=16, num_labels=4, local_scale=2, use_local=False)
    from medhash_train.trainer import TrainConfig

    with pytest.raises(ValueError, match="divide input_size"):
        TrainConfig(input_size=100, local_scale=3)
    with pytest.raises(ValueError, match="attention crop"):
        TrainConfig(method="dpsh", input_size=128, local_scale=2)

