"""The unseen-archive protocol's metrics against small cases computed by hand: same-patient
exclusion, random tie-breaking, the patient bootstrap, AUROC (medhash_sdk.metrics and
medhash_sdk.evaluation; numpy only)."""
import numpy as np
import pytest

from medhash_sdk import metrics as M
from medhash_sdk import evaluation as E

# five images of four patients (A has two); labels: columns x, y
PATIENTS = np.array(["A", "A", "B", "C", "D"])
LABELS = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [1, 1]])
D = np.array([
    [0, 0, 2, 1, 3],     # query 0 (A): image 1 is its own patient's, at distance 0 and relevant
    [0, 0, 1, 2, 3],
    [1, 2, 0, 1, 3],     # query 2 (B): images 0 (relevant) and 3 (not) tie at distance 1
    [1, 1, 1, 0, 2],     # query 3 (C): three irrelevant images tie ahead of the one relevant
    [3, 3, 3, 2, 0],
], dtype=np.float64)


def _aps(seeds):
    return M.leave_patient_out_aps(lambda rows: D[rows], LABELS, PATIENTS, k=100, seeds=seeds)


def test_same_patient_images_are_not_in_the_database():
    aps = _aps(None)
    # query 0: database {2, 3, 4} ranked 3, 2, 4 -> relevant at ranks 2 and 3
    assert aps[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # without the exclusion image 1 (same patient, distance 0, relevant) would come first
    with_own = M.average_precisions(D[[0]], (LABELS[[0]] @ LABELS.T) > 0, k=100, seeds=None,
                                    exclude=np.array([[True, False, False, False, False]]))
    assert with_own[0] > aps[0]
    # query 1: database {2, 3, 4} ranked 2, 3, 4 -> relevant at ranks 1 and 3
    assert aps[1] == pytest.approx((1 + 2 / 3) / 2)
    # query 3: only image 4 is relevant, ranked 4th whatever the tie order
    assert aps[3] == pytest.approx(1 / 4)


def test_ties_broken_at_random_and_averaged_over_seeds():
    # query 2, database {0, 1, 3, 4}: order 0,3,1,4 -> AP 29/36; order 3,0,1,4 -> AP 23/36
    assert _aps(None)[2] == pytest.approx(29 / 36)          # database order
    per_seed = {round(float(_aps(s)[2]), 9) for s in range(30)}
    assert per_seed == {round(29 / 36, 9), round(23 / 36, 9)}
    assert _aps(range(400))[2] == pytest.approx(26 / 36, abs=0.01)


def test_exclusion_keeps_excluded_items_out_of_the_top_k():
    # k = 2 for query 0: the top 2 of {2, 3, 4} are 3, 2 -> one relevant at rank 2 -> AP 1/2
    aps = M.leave_patient_out_aps(lambda rows: D[rows], LABELS, PATIENTS, k=2, seeds=None)
    assert aps[0] == pytest.approx(1 / 2)


def test_chunks_give_the_same_answer():
    a = M.leave_patient_out_aps(lambda rows: D[rows], LABELS, PATIENTS, k=3, seeds=(0, 1), chunk=2)
    b = M.leave_patient_out_aps(lambda rows: D[rows], LABELS, PATIENTS, k=3, seeds=(0, 1), chunk=256)
    np.testing.assert_allclose(a, b)


def test_codes_and_vectors_rows_match_the_generic_function():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (5, 2), dtype=np.uint8)
    got = E.archive_aps_codes(codes, LABELS, PATIENTS, k=100, seeds=(0,))
    want = M.leave_patient_out_aps(lambda r: M.hamming_distance_matrix(codes[r], codes), LABELS, PATIENTS, 100, (0,))
    np.testing.assert_allclose(got, want)
    with pytest.raises(ValueError, match="two patients"):
        M.leave_patient_out_aps(lambda r: D[r], LABELS, np.array(["A"] * 5))


def test_patient_bootstrap_hand_case_and_determinism():
    # patient A: two images with AP 1; patient B: one image with AP 0. A replicate draws two
    # patients: AA -> 1 (prob 1/4), BB -> 0 (1/4), AB -> 2/3 (1/2); the 95% interval is [0, 1]
    values, pats = np.array([1.0, 1.0, 0.0]), np.array(["A", "A", "B"])
    assert M.patient_bootstrap(values, pats, n_boot=2000, seed=0) == (0.0, 1.0)
    lo, hi = M.patient_bootstrap(values, pats, n_boot=2000, seed=0, level=0.4)   # 30% / 70% quantiles
    assert lo == pytest.approx(2 / 3) and hi == pytest.approx(2 / 3)
    rng = np.random.default_rng(0)
    v, p = rng.random(300), rng.integers(0, 90, 300)
    assert M.patient_bootstrap(v, p, seed=5) == M.patient_bootstrap(v, p, seed=5)
    assert M.patient_bootstrap(v, p, seed=5) != M.patient_bootstrap(v, p, seed=6)
    lo, hi = M.patient_bootstrap(v, p)
    assert lo < v.mean() < hi
    # constant values: no spread at all
    assert M.patient_bootstrap(np.full(10, 0.3), np.arange(10)) == pytest.approx((0.3, 0.3))
    with pytest.raises(ValueError, match="patients"):
        M.patient_bootstrap(v, p[:10])


def test_auroc_hand_computed():
    assert M.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert M.auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == pytest.approx(0.5)     # ties count one half
    # positives 0.5, 0.9 vs negatives 0.5, 0.1: pairs (0.5 vs 0.5) half, the other three won
    assert M.auroc([0.5, 0.9, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(3.5 / 4)
    assert np.isnan(M.auroc([0.2, 0.3], [1, 1]))


def test_per_label_auroc_keeps_findings_with_enough_positives():
    rng = np.random.default_rng(0)
    y = np.zeros((100, 3), np.uint8)
    y[:30, 0] = 1
    y[:10, 1] = 1
    y[:, 2] = 1 - y[:, 0]
    probs = rng.random((100, 3))
    probs[:30, 0] += 1.0                                   # label a perfectly separated
    out = M.per_label_auroc(probs, y, ["a", "b", "No Finding"], min_positives=25)
    assert set(out) == {"a", "No Finding"} and out["a"] == {"auroc": 1.0, "positives": 30}


def test_unseen_archive_report_rows_and_differences():
    rng = np.random.default_rng(1)
    n = 60
    labels = (rng.random((n, 3)) < 0.3).astype(np.uint8)
    patients = np.repeat(np.arange(30), 2)
    vec = rng.normal(size=(n, 16))
    raw = rng.normal(size=(n, 16))
    rep = E.unseen_archive_report(labels, patients, ["a", "b", "c"], vectors=vec, raw=raw,
                                  probabilities=rng.random((n, 3)), k=10, seeds=(0,), min_positives=5)
    assert set(rep["rows"]) == {"model float", "raw pixels", "random"}
    want = M.leave_patient_out_aps(lambda r: M.cosine_distance_matrix(vec[r], vec), labels, patients, 10, (0,))
    assert rep["rows"]["model float"]["map"] == pytest.approx(want.mean())
    d = rep["vs_raw_pixels"]["model float"]
    assert d["diff"] == pytest.approx(rep["rows"]["model float"]["map"] - rep["rows"]["raw pixels"]["map"])
    assert d["ci95"][0] <= d["diff"] <= d["ci95"][1]
    assert rep["patients"] == 30 and len(rep["aps"]["random"]) == n
    assert rep["mean_auroc"] == pytest.approx(np.mean([v["auroc"] for v in rep["auroc"].values()]))


def test_raw_pixel_vectors_are_standardised():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (64, 48), dtype=np.uint8), rng.integers(0, 256, (20, 20), dtype=np.uint8)]
    v = E.raw_pixel_vectors(imgs)
    assert v.shape == (2, 32 * 32)
    np.testing.assert_allclose(v.mean(1), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
