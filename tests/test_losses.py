"""Every hashing loss: scalar output, finite gradients, and the behaviour its paper asks for."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medhash_train import losses as L  # noqa: E402

NBITS, C = 32, 15


def _batch(b=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.tanh(torch.randn(b, NBITS, generator=g)).requires_grad_(True)
    y = (torch.rand(b, C - 1, generator=g) < 0.15).float()
    y = torch.cat([y, (y.sum(1, keepdim=True) == 0).float()], 1)   # "No Finding" column
    return u, y


@pytest.mark.parametrize("method", sorted(L.METHODS))
def test_loss_scalar_and_gradient(method):
    loss = L.make_loss(method, NBITS, C)
    u, y = _batch()
    v = loss(u, y)
    assert v.ndim == 0 and torch.isfinite(v)
    v.backward()
    assert u.grad is not None and u.grad.shape == u.shape
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0


@pytest.mark.parametrize("method", sorted(L.METHODS))
def test_loss_prefers_label_consistent_codes(method):
    """Codes that agree within a class and differ across classes score lower than random codes."""
    loss = L.make_loss(method, NBITS, 4)
    y = torch.eye(4).repeat_interleave(4, 0)                        # 16 images, 4 classes
    centres = L.hash_centres(4, NBITS)
    good = 0.95 * centres.repeat_interleave(4, 0)
    rnd = 0.95 * torch.sign(torch.randn(16, NBITS, generator=torch.Generator().manual_seed(1)))
    assert float(loss(good, y)) < float(loss(rnd, y))


def test_similarity_multilabel_and_no_finding():
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=torch.float32)
    s = L.similarity(y)
    assert s.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


def test_pair_weights_balance_similar_and_dissimilar():
    y = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [0, 1]], dtype=torch.float32)
    s = L.similarity(y)
    mask = 1 - torch.eye(5)
    w = L.pair_weights(s, mask)
    # total weight of similar pairs == total weight of dissimilar pairs == number of pairs
    assert float((w * s).sum()) == pytest.approx(20.0)
    assert float((w * (1 - s)).sum()) == pytest.approx(20.0)


def test_bayesian_loss_is_dpsh_when_unweighted_and_stable():
    u, y = _batch()
    a = L.BayesianPairLoss(NBITS, weighted=False)(u, y)
    b = L.DPSHLoss(NBITS)(u, y)
    assert float(a.detach()) == pytest.approx(float(b.detach()))
    big = torch.ones(4, NBITS) * 1.0
    big[2:] = -1.0
    yb = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.float32)
    v = L.BayesianPairLoss(512, alpha=50.0)(big.repeat(1, 16), yb)     # theta up to +-12800
    assert torch.isfinite(v)


def test_hash_centres_deterministic_and_orthogonal():
    c = L.hash_centres(15, 32)
    assert c.shape == (15, 32) and set(np.unique(c.numpy())) == {-1.0, 1.0}
    g = c[:15] @ c[:15].t()
    off = g - torch.diag(torch.diag(g))
    assert off.abs().max() == 0 and torch.equal(c, L.hash_centres(15, 32))
    c48 = L.hash_centres(15, 48, seed=3)
    assert torch.equal(c48, L.hash_centres(15, 48, seed=3)) and c48.shape == (15, 48)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method"):
        L.make_loss("nope", 32, 3)
