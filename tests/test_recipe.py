"""Issue 10's training pieces: NT-Xent, class-balanced sampling weights, patient-grouped folds,
the cross-collection split, pretraining data loading, and one short training step with the
contrastive term (shapes and wiring only; quality is measured in benchmarks/)."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medhash_sdk.datasets import ImageSet  # noqa: E402
from medhash_train import contrastive as C  # noqa: E402
from medhash_train.selection import cross_collection, fold_set, patient_folds  # noqa: E402
from medhash_train.trainer import TrainConfig, balanced_weights, train  # noqa: E402


def two_label_set(rng: np.random.Generator, n: int, split: np.ndarray | None = None) -> ImageSet:
    """n random 32 x 32 images, labels alternating "a" / "No Finding", one patient each; all
    "train" unless `split` says otherwise."""
    imgs = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(n)]
    y = np.zeros((n, 2), np.uint8)
    y[np.arange(n), np.arange(n) % 2] = 1
    return ImageSet(imgs, y, ["a", "No Finding"], np.array([f"i{i}" for i in range(n)]),
                    np.array([f"p{i}" for i in range(n)]), np.array(["train"] * n) if split is None else split)


def test_nt_xent_hand_computed_and_ordering():
    # two images, views identical, orthogonal embeddings: each row's positive has similarity 1,
    # its two negatives 0 -> loss = -log(e^(1/t) / (e^(1/t) + 2))
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    want = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2.0))
    assert float(C.nt_xent(z, z, t)) == pytest.approx(want, rel=1e-5)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 32, generator=g)
    matched = float(C.nt_xent(a, a + 0.05 * torch.randn(16, 32, generator=g)))
    shuffled = float(C.nt_xent(a, a[torch.randperm(16, generator=g)]))
    assert matched < shuffled
    with pytest.raises(ValueError, match="temperature"):
        C.nt_xent(z, z, 0.0)


def test_balanced_weights_hand_computed():
    y = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [1, 1]])
    # counts: column 0 -> 4, column 1 -> 2; weight = mean of 1/count over the image's labels
    np.testing.assert_allclose(balanced_weights(y), [0.25, 0.25, 0.25, 0.5, (0.25 + 0.5) / 2])


def test_patient_folds_group_patients_and_balance_images():
    rng = np.random.default_rng(0)
    patients = rng.integers(0, 200, 900).astype(str)
    f = patient_folds(patients, 3, seed=0)
    for p in np.unique(patients):
        assert len(set(f[patients == p])) == 1                    # a patient sits in one fold
    counts = np.bincount(f, minlength=3)
    assert counts.min() > 0.25 * len(patients) and set(f) == {0, 1, 2}
    np.testing.assert_array_equal(f, patient_folds(patients, 3, seed=0))
    assert (f != patient_folds(patients, 3, seed=1)).any()
    with pytest.raises(ValueError, match="k must be"):
        patient_folds(patients[:3], 5)


def _set(ids, patients, split="train"):
    n = len(ids)
    return ImageSet([np.zeros((4, 4), np.uint8)] * n, np.eye(2, dtype=np.uint8)[np.arange(n) % 2], ["a", "b"],
                    np.array(ids), np.array(patients), np.array([split] * n))


def test_cross_collection_drops_the_training_patients_from_the_test_side():
    a = _set(["i1", "i2", "i3"], ["p1", "p2", "p2"])
    b = _set(["i3", "j1", "j2", "j3"], ["p2", "p2", "q1", "q2"])     # i3 shared; p2's other image too
    cc = cross_collection(a, b)
    assert list(cc.split) == ["train"] * 3 + ["test"] * 2
    assert list(cc.image_id[cc.split == "test"]) == ["j2", "j3"]
    assert cc.info["test_images_dropped_shared_patients"] == 2
    fs = fold_set(cc, np.arange(len(cc)), np.array([0, 1, 1, 0, 1]), 1)
    assert list(fs.split) == ["train", "test", "test", "train", "test"]


def test_load_unlabelled_leaves_out_the_test_split(tmp_path):
    p = tmp_path / "k.npz"
    np.savez(p, images=np.zeros((5, 8, 8), np.uint8), label=np.zeros(5), split=np.array(["train"] * 3 + ["test"] * 2))
    imgs, notes = C.load_unlabelled([str(p)])
    assert len(imgs) == 3 and "3 of 5" in notes[0]
    assert len(C.load_unlabelled([str(p)], exclude_split=None)[0]) == 5


@pytest.mark.parametrize("on", ["codes", "features"])
def test_one_epoch_with_the_contrastive_term(on):
    rng = np.random.default_rng(0)
    n = 40
    imgs = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(n)]
    y = np.zeros((n, 3), np.uint8)
    y[np.arange(n), np.arange(n) % 3] = 1
    ds = ImageSet(imgs, y, ["a", "b", "No Finding"], np.array([f"i{i}" for i in range(n)]),
                  np.array([f"p{i // 2}" for i in range(n)]), np.array(["train"] * n))
    cfg = TrainConfig(method="dpsh-bce", nbits=16, input_size=32, width=0.125, epochs=1, batch_size=16,
                      contrastive=1.0, contrastive_on=on, balanced=True, progress=False)
    seen = []
    res = train(cfg, ds, log=lambda s: None, on_epoch=lambda e, m: seen.append(e) or {"marker": e})
    assert seen == [1] and res.history[0]["marker"] == 1 and res.best_epoch == 1
    assert math.isfinite(res.history[0]["loss"])
    assert not hasattr(res.model, "head")          # the projection head is not part of the network
    with pytest.raises(ValueError, match="contrastive_on"):
        TrainConfig(contrastive=1.0, contrastive_on="pixels")


def test_weight_average_is_what_training_returns():
    """With ema > 0 the returned network is the running average of the weights, not the last
    step's (which two seeded runs without it reproduce exactly)."""
    rng = np.random.default_rng(1)
    ds = two_label_set(rng, 32)
    base = dict(method="dpsh-bce", nbits=16, input_size=32, width=0.125, epochs=2, batch_size=16, progress=False)
    plain = train(TrainConfig(**base), ds, log=lambda s: None).model.state_dict()
    again = train(TrainConfig(**base), ds, log=lambda s: None).model.state_dict()
    avg = train(TrainConfig(**base, ema=0.5), ds, log=lambda s: None).model.state_dict()
    assert plain.keys() == avg.keys()
    w = "hash.weight"
    assert torch.equal(plain[w], again[w])           # same seed, same weights: the comparison below means something
    assert not torch.allclose(plain[w], avg[w])      # the average, not the last step
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="ema"):
            TrainConfig(ema=bad)


def test_train_recipe_flag_and_explicit_overrides():
    import argparse

    from medhash_train.commands import register_train, train_settings
    from medhash_train.recipes import RECIPES

    parser = argparse.ArgumentParser()
    register_train(parser.add_subparsers())
    a = parser.parse_args(["train", "--data", "x.npz", "--out", "o", "--recipe", "con-codes"])
    s = train_settings(a)
    assert {k: s[k] for k in RECIPES["con-codes"]} == RECIPES["con-codes"] and s["recipe"] == "con-codes"
    b = parser.parse_args(["train", "--data", "x.npz", "--out", "o", "--recipe", "con-codes", "--bits", "128",
                           "--epochs", "7", "--seed", "3", "--members", "2"])
    s = train_settings(b)
    assert (s["nbits"], s["epochs"], s["seed"], s["method"], s["members"]) == (128, 7, 3, RECIPES["con-codes"]["method"], 2)
    c = parser.parse_args(["train", "--data", "x.npz", "--out", "o"])
    assert train_settings(c)["method"] == "attention" and "recipe" not in train_settings(c)
    TrainConfig(**train_settings(b))                  # every key is a TrainConfig field


def test_pixel_bits_are_simhash_of_the_standardised_32px_input():
    from medhash_train.attention import pixel_code_logits, pixel_projection, standardised_pixels

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 64, 64, generator=g)
    proj = pixel_projection(4096, seed=0)
    np.testing.assert_array_equal(proj.numpy(), pixel_projection(4096, seed=0).numpy())
    a = pixel_code_logits(x, proj)
    # brightness / contrast changes leave the standardised pixels, hence the bits, unchanged
    b = pixel_code_logits(0.5 * x + 0.3, proj)
    assert torch.equal(a > 0, b > 0)
    # the share of differing bits estimates the angle between the two images' 32 x 32 pixels / pi
    v = torch.nn.functional.avg_pool2d(x, 2).flatten(1)
    v = v - v.mean(1, keepdim=True)
    cos = float(torch.nn.functional.cosine_similarity(v[:1], v[1:]))
    differ = float(((a[0] > 0) != (a[1] > 0)).float().mean())
    assert differ == pytest.approx(math.acos(cos) / math.pi, abs=0.03)
    v = standardised_pixels(x)        # what the bits project: unit vectors whose dot product is that cosine
    assert float(v[0] @ v[1]) == pytest.approx(cos, abs=1e-5)
    assert torch.allclose(v.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="multiple of 32"):
        pixel_code_logits(torch.rand(1, 1, 48, 48), pixel_projection(8, 0))


def test_network_with_pixel_bits_exports_them(tmp_path):
    from medhash_sdk import Encoder
    from medhash_sdk.codes import pack_codes
    from medhash_sdk.preprocessing import Preprocessing, preprocess_batch
    from medhash_train.attention import NetConfig, build_model
    from medhash_train.onnx_export import export_onnx

    torch.manual_seed(0)
    net = build_model(NetConfig(nbits=16, num_labels=3, width=0.125, stem="small", use_local=False, pixel_bits=16)).eval()
    card = export_onnx(net, Preprocessing(32), ["a", "b", "c"], "test", tmp_path / "m.onnx")
    assert card.nbits == 32 and "16 pixel bits" in card.backbone
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (40, 36), dtype=np.uint8) for _ in range(6)]
    with torch.no_grad():
        u = net(torch.from_numpy(preprocess_batch(imgs, Preprocessing(32))))[0].numpy()
    assert u.shape == (6, 32)
    np.testing.assert_array_equal(Encoder(str(tmp_path / "m.onnx")).encode(imgs), pack_codes(u))


def test_simclr_pretraining_is_cached_and_loads_into_the_network(tmp_path):
    p = tmp_path / "unlabelled.npz"
    rng = np.random.default_rng(0)
    np.savez(p, images=rng.integers(0, 256, (24, 40, 40), dtype=np.uint8))
    cfg = C.PretrainConfig(input_size=32, width=0.125, stem="small", epochs=1, batch_size=8, progress=False)
    logs = []
    path = C.pretrained_backbone([str(p)], cfg, str(tmp_path / "cache"), log=logs.append)
    assert path.endswith(".pt") and any("written" in m for m in logs)
    again = C.pretrained_backbone([str(p)], cfg, str(tmp_path / "cache"), log=logs.append)
    assert again == path and "from the cache" in logs[-1]
    from medhash_train.attention import NetConfig, build_model

    sd = torch.load(path, weights_only=True)["state_dict"]
    net = build_model(NetConfig(nbits=16, num_labels=2, width=0.125, stem="small", use_local=False), path)
    for k, v in sd.items():
        assert torch.equal(net.backbone.state_dict()[k], v)


def test_pretraining_on_the_training_images_is_its_own_cached_backbone(tmp_path):
    p = tmp_path / "unlabelled.npz"
    rng = np.random.default_rng(1)
    np.savez(p, images=rng.integers(0, 256, (16, 40, 40), dtype=np.uint8))
    cfg = C.PretrainConfig(input_size=32, width=0.125, stem="small", epochs=1, batch_size=8, progress=False)
    cache = str(tmp_path / "cache")
    fold_a = [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(8)]
    fold_b = [a.copy() for a in fold_a]
    fold_b[3][0, 0] ^= 1                   # one pixel differs: another training set, another backbone
    logs: list[str] = []
    alone = C.pretrained_backbone([str(p)], cfg, cache, log=logs.append)
    with_a = C.pretrained_backbone([str(p)], cfg, cache, log=logs.append, extra=fold_a)
    assert any("24 images" in m and "8 images of the training split" in m for m in logs)
    with_b = C.pretrained_backbone([str(p)], cfg, cache, log=logs.append, extra=fold_b)
    assert len({alone, with_a, with_b}) == 3
    assert C.pretrained_backbone([str(p)], cfg, cache, log=logs.append, extra=[a.copy() for a in fold_a]) == with_a
    assert "from the cache" in logs[-1]
    with pytest.raises(ValueError, match="pretrain_epochs > 0"):
        TrainConfig(pretrain_on_train=True)


def test_training_pretrains_on_its_train_split_only(tmp_path):
    """pretrain_on_train: the train split's images join the pretraining pool; the test split's
    (a held-out fold, an unseen archive) never do, not even unlabelled."""
    p = tmp_path / "unlabelled.npz"
    rng = np.random.default_rng(2)
    np.savez(p, images=rng.integers(0, 256, (120, 40, 40), dtype=np.uint8))   # one pretraining batch is 128
    ds = two_label_set(rng, 36, np.array(["train"] * 20 + ["test"] * 16))
    logs: list[str] = []
    train(TrainConfig(method="dpsh-bce", nbits=16, input_size=32, width=0.125, epochs=1, batch_size=8,
                      pretrain_data=(str(p),), pretrain_epochs=1, pretrain_on_train=True,
                      pretrain_cache=str(tmp_path / "cache"), progress=False), ds, log=logs.append)
    assert any("140 images" in m and "20 images of the training split" in m for m in logs), logs


def test_frozen_backbone_epochs_train_the_heads_only():
    """freeze_backbone_epochs = 1: after the first epoch the backbone is still its initial
    weights and the hash layer has moved; after the second the backbone has moved too."""
    from medhash_train.attention import build_model
    from medhash_train.trainer import _seed_all, net_config_for

    rng = np.random.default_rng(3)
    ds = two_label_set(rng, 32)
    cfg = TrainConfig(method="dpsh-bce", nbits=16, input_size=32, width=0.125, epochs=2, batch_size=16,
                      freeze_backbone_epochs=1, progress=False)
    _seed_all(cfg.seed)                       # what train() does before it builds the network
    start = build_model(net_config_for(cfg, 2)).state_dict()
    seen: dict[int, dict[str, torch.Tensor]] = {}
    train(cfg, ds, log=lambda s: None,
          on_epoch=lambda e, m: seen.__setitem__(e, {k: v.detach().clone() for k, v in m.named_parameters()}))
    backbone = [k for k in seen[1] if k.startswith("backbone.")]
    assert backbone and all(torch.equal(seen[1][k], start[k]) for k in backbone)
    assert not torch.equal(seen[1]["hash.weight"], start["hash.weight"])
    assert any(not torch.equal(seen[2][k], start[k]) for k in backbone)
    with pytest.raises(ValueError, match="freeze_backbone_epochs"):
        TrainConfig(epochs=5, freeze_backbone_epochs=5)


def test_strong_and_mixed_views_train_and_need_the_contrastive_term():
    rng = np.random.default_rng(4)
    ds = two_label_set(rng, 32)
    base = dict(method="dpsh-bce", nbits=16, input_size=32, width=0.125, epochs=1, batch_size=16,
                contrastive=1.0, contrastive_on="features", progress=False)
    losses = {v: train(TrainConfig(**base, views=v), ds, log=lambda s: None).history[0]["loss"]
              for v in ("light", "strong", "mixed", "mild", "mild-nt")}
    assert all(math.isfinite(x) for x in losses.values()) and len(set(losses.values())) == 5, losses
    with pytest.raises(ValueError, match="views"):
        TrainConfig(views="strong")              # no contrastive term
    with pytest.raises(ValueError, match="views must be one of"):
        TrainConfig(contrastive=1.0, views="heavy")


def test_ensemble_trains_its_members_as_single_runs_and_exports_as_one_model(tmp_path):
    """members=2: member i is exactly the single network of seed seed * 2 + i; the codes sit side by
    side and the probabilities are averaged, in torch, through a checkpoint and in the ONNX file."""
    from medhash_sdk import Encoder
    from medhash_sdk.codes import pack_codes
    from medhash_sdk.preprocessing import Preprocessing, preprocess_batch
    from medhash_train.attention import NetConfig, build_model
    from medhash_train.ensemble import EnsembleHashNet
    from medhash_train.evaluate import torch_outputs
    from medhash_train.onnx_export import export_checkpoint
    from medhash_train.trainer import checkpoint_dict, save_checkpoint

    rng = np.random.default_rng(3)
    ds = two_label_set(rng, 32)
    base = dict(method="dpsh-bce", nbits=16, input_size=32, width=0.125, epochs=1, batch_size=16, progress=False,
                seed=1)
    res = train(TrainConfig(**base, members=2), ds, log=lambda s: None)
    assert isinstance(res.model, EnsembleHashNet) and res.net_config.code_bits == 32
    assert [h["member"] for h in res.history] == [0, 1]
    x = torch.from_numpy(preprocess_batch(ds.images[:6], Preprocessing(32)))
    u, p = torch_outputs(res.model, x)
    singles = [torch_outputs(train(TrainConfig(**dict(base, seed=s)), ds, log=lambda s: None).model, x)
               for s in (2, 3)]                      # seed 1 * 2 members + 0, + 1
    np.testing.assert_array_equal(u, np.concatenate([s[0] for s in singles], 1))
    np.testing.assert_allclose(p, (singles[0][1] + singles[1][1]) / 2, atol=1e-6)

    save_checkpoint(str(tmp_path / "c.pt"), checkpoint_dict(res, TrainConfig(**base, members=2), ds))
    card = export_checkpoint(str(tmp_path / "c.pt"), str(tmp_path / "m.onnx"))
    assert card.nbits == 32 and card.backbone.startswith("ensemble of 2 networks")
    enc = Encoder(str(tmp_path / "m.onnx"))
    np.testing.assert_array_equal(enc.encode(ds.images[:6]), pack_codes(u))
    with pytest.raises(ValueError, match="members"):
        NetConfig(nbits=16, num_labels=2, members=0)
    with pytest.raises(ValueError, match="members"):
        TrainConfig(members=0)
    one = build_model(NetConfig(nbits=16, num_labels=2, width=0.125, use_local=False))
    with pytest.raises(ValueError, match="2 members, 1 given"):
        EnsembleHashNet(NetConfig(nbits=16, num_labels=2, width=0.125, use_local=False, members=2), [one])


def test_relational_distillation_is_zero_for_the_teachers_own_ranking_and_grows_when_shuffled():
    from medhash_train.ensemble import relational_distillation

    g = torch.Generator().manual_seed(0)
    teacher = torch.tanh(torch.randn(16, 32, generator=g))
    assert float(relational_distillation(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)
    # a student at another code length that keeps who is near whom (a random rotation-like
    # projection of the teacher) is closer than one that keeps no neighbour
    near = teacher @ torch.linalg.qr(torch.randn(32, 32, generator=g))[0][:, :16]
    far = torch.randn(16, 16, generator=g)
    assert 0 <= float(relational_distillation(near, teacher)) < float(relational_distillation(far, teacher))
    with pytest.raises(ValueError, match="one batch"):
        relational_distillation(teacher[:8], teacher)
    with pytest.raises(ValueError, match="distill"):
        TrainConfig(distill=1.0, members=2)
    with pytest.raises(ValueError, match="distill_members"):
        TrainConfig(distill=1.0, distill_members=1)


def test_pixel_distillation_adds_the_raw_pixel_ranking_term():
    rng = np.random.default_rng(4)
    ds = two_label_set(rng, 32)
    base = dict(method="dpsh-bce", nbits=16, input_size=32, width=0.125, epochs=1, batch_size=16, progress=False)
    plain = train(TrainConfig(**base), ds).history[0]["loss"]
    with_pixels = train(TrainConfig(**base, pixel_distill=1.0), ds).history[0]["loss"]
    # same seed and batches: the added KL term is >= 0, and not zero for networks that have not learned the pixels
    assert math.isfinite(with_pixels) and with_pixels > plain
    with pytest.raises(ValueError, match="pixel_distill"):
        TrainConfig(pixel_distill=-1.0)


def test_distilled_training_trains_its_teacher_first_and_returns_one_network():
    rng = np.random.default_rng(4)
    ds = two_label_set(rng, 32)
    msgs = []
    res = train(TrainConfig(method="dpsh-bce", nbits=16, input_size=32, width=0.125, epochs=1, batch_size=16,
                            progress=False, distill=1.0), ds, log=msgs.append)
    assert type(res.model).__name__ == "AttentionHashNet" and res.net_config.code_bits == 16
    assert any(m.startswith("teacher member 2/2") for m in msgs)
    assert math.isfinite(res.history[0]["loss"])
