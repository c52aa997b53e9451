"""Correspondences from unpaired rows: train_projections(refine=True)."""

import numpy as np
import pytest

import latentspace
from latentspace import AlignmentNotFoundError, LatentSpace
from latentspace._training import matching


def _views(n, widths=(24, 20), factors=8, noise=0.3, seed=0, clusters=40):
    """Two models' embeddings of the same ``n`` items: linear maps of shared
    clustered factors plus noise (row i of each is item i)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, factors))
    hidden = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, factors))
    return [hidden @ rng.standard_normal((factors, w)) * 3 + 5
            + noise * rng.standard_normal((n, w)) for w in widths]


def _isometric_views(n, seed=0):
    """Two models that see the same items up to a rotation (and embedding in
    a different width), as two versions of one neural model roughly do."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, 16)) * 2
    hidden = centres[rng.integers(0, 60, n)] + rng.standard_normal((n, 16))
    hidden *= np.linspace(3, 0.5, 16)  # distinct variances: a well-posed PCA
    qa, _ = np.linalg.qr(rng.standard_normal((24, 16)))
    qb, _ = np.linalg.qr(rng.standard_normal((20, 16)))
    return hidden @ qa.T + 1, hidden @ qb.T - 2


def _space(widths=(24, 20), dim=6):
    space = LatentSpace(dim, seed=0)
    space.register("a", widths[0])
    space.register("b", widths[1])
    return space


def _top1(space, XA, XB):
    hits = space.search("a", XA, "b", XB, k=1)
    return float(np.mean(hits.indices[:, 0] == np.arange(len(XA))))


# ------------------------------------------------------------ known pairs


# Noisy views (each coordinate more noise than signal) of 100 and 80
# dimensions: 120 known pairs fit a weak space (measured: top-1 0.64 on
# held-out items against 0.81 with all 1,200 pairs known).
HARD = dict(widths=(100, 80), factors=30, noise=16, clusters=200)


def test_refine_finds_the_pools_correspondences():
    XA, XB = _views(1400, **HARD)
    test = slice(1200, 1400)
    known = np.arange(120)
    pool = np.arange(120, 1200)
    shuffled = np.random.default_rng(1).permutation(pool)
    space = _space(HARD["widths"], dim=16)
    result = space.train_projections(
        {"a": XA[known], "b": XB[known]},
        unpaired={"a": XA[pool], "b": XB[shuffled]}, refine=True)
    m = result.matching
    assert m.method == "refine" and m.accepted and m.criterion >= 3
    assert m.n_pairs > 300 and m.rounds >= 2
    assert m.history[-1]["check_top1"] > m.history[0]["check_top1"] + 0.1
    alone = _space(HARD["widths"], dim=16)
    alone.train_projections({"a": XA[known], "b": XB[known]})
    assert _top1(space, XA[test], XB[test]) > _top1(alone, XA[test], XB[test]) + 0.05


def test_refine_rejects_pools_that_share_no_items():
    """Pools of different items: the pseudo pairs do not improve the checks,
    and the space is the one the known pairs give."""
    XA, XB = _views(1300, **HARD)
    known = np.arange(120)
    pools = {"a": XA[120:700], "b": XB[700:1300]}
    space = _space(HARD["widths"], dim=16)
    result = space.train_projections(
        {"a": XA[known], "b": XB[known]}, unpaired=pools, refine=True)
    assert result.matching.method == "refine"
    assert not result.matching.accepted and result.matching.criterion < 3
    alone = _space(HARD["widths"], dim=16)
    alone.train_projections({"a": XA[known], "b": XB[known]}, unpaired=pools)
    for x, y in zip(space.weights("a"), alone.weights("a")):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------- zero pairs


def test_zero_pairs_align_models_that_differ_by_a_rotation():
    XA, XB = _isometric_views(2200)
    test = slice(2000, 2200)
    order = np.random.default_rng(2).permutation(2000)
    space = _space(dim=12)
    result = space.train_projections(
        None, unpaired={"a": XA[:2000], "b": XB[order]}, refine=True)
    m = result.matching
    assert m.method == "zero-pair" and m.accepted and m.criterion >= 0.75
    assert _top1(space, XA[test], XB[test]) > 0.9


def test_zero_pairs_refuse_unrelated_models_and_change_nothing():
    rng = np.random.default_rng(3)
    space = _space()
    before = [w.copy() for name in ("a", "b") for w in space.weights(name)]
    with pytest.raises(AlignmentNotFoundError, match=r"mutual nearest neighbours") as info:
        space.train_projections(
            None, unpaired={"a": rng.standard_normal((600, 24)),
                            "b": rng.standard_normal((500, 20))}, refine=True)
    assert info.value.matching.criterion < 0.75
    after = [w for name in ("a", "b") for w in space.weights(name)]
    for x, y in zip(before, after):
        assert np.array_equal(x, y)


def test_a_few_known_pairs_seed_the_dictionary():
    XA, XB = _isometric_views(2000, seed=4)
    order = np.random.default_rng(5).permutation(np.arange(30, 2000))
    space = _space(dim=12)
    result = space.train_projections(
        {"a": XA[:30], "b": XB[:30]},
        unpaired={"a": XA[30:], "b": XB[order]}, refine=True)
    assert result.matching.method == "zero-pair" and result.matching.accepted


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize("call, message", [
    (lambda s, X: s.train_projections(None, unpaired={"a": X[0]}, refine=True),
     "exactly two models"),
    (lambda s, X: s.train_projections(None, refine=True), "exactly two models"),
    (lambda s, X: s.train_projections(None, unpaired={"a": X[0], "c": X[1]}, refine=True),
     "'c' is not registered"),
    (lambda s, X: s.train_projections({"a": X[0][:5], "b": X[1][:6]},
                                      unpaired={"a": X[0], "b": X[1]}, refine=True),
     "same number of rows"),
    (lambda s, X: s.train_projections(None, unpaired={"a": X[0], "b": X[1]}, refine=1),
     "refine must be True or False"),
    (lambda s, X: s.train_projections(None, unpaired={"a": X[0], "b": X[1][:, :3]},
                                      refine=True),
     r"unpaired rows for model 'b' must have shape"),
    (lambda s, X: s.train_projections(None, unpaired={"a": np.where(X[0] > 2, np.nan, X[0]),
                                                      "b": X[1]}, refine=True),
     r"unpaired rows for model 'a' contains NaN"),
    (lambda s, X: s.train_projections({"a": X[0], "b": X[1]}, observed={"a": [True] * 50},
                                      unpaired={"a": X[0], "b": X[1]}, refine=True),
     "neither observed= nor frozen="),
])
def test_refine_errors_name_the_problem_and_change_nothing(call, message):
    X = _views(50)
    space = _space()
    before = [w.copy() for w in space.weights("a")]
    with pytest.raises(ValueError, match=message):
        call(space, X)
    assert all(np.array_equal(x, y) for x, y in zip(before, space.weights("a")))


def test_pools_too_large_to_compare_are_refused(monkeypatch):
    monkeypatch.setattr(matching, "MAX_POOL_PRODUCT", 100)
    X = _views(20)
    with pytest.raises(ValueError, match=r"400 similarities, more than 100"):
        _space().train_projections(None, unpaired={"a": X[0], "b": X[1]}, refine=True)


# ------------------------------------------------- helpers against NumPy


def _unit(Z):
    return Z / np.linalg.norm(Z, axis=1, keepdims=True)


def _csls(ZA, ZB, K=10):
    """CSLS of every pair, plainly."""
    S = ZA @ ZB.T
    r_a = np.sort(S, axis=1)[:, -K:].mean(axis=1)
    r_b = np.sort(S, axis=0)[-K:].mean(axis=0)
    return 2 * S - r_a[:, None] - r_b[None, :]


def test_csls_neighbours_and_candidates_match_a_plain_computation():
    rng = np.random.default_rng(6)
    ZA = _unit(rng.standard_normal((90, 5))).astype(np.float32)
    ZB = _unit(rng.standard_normal((70, 5))).astype(np.float32)
    C = _csls(ZA.astype(np.float64), ZB.astype(np.float64))
    fwd, bwd, S, r_a = matching._csls_neighbours(ZA, ZB)
    np.testing.assert_array_equal(fwd, C.argmax(axis=1))
    np.testing.assert_array_equal(bwd, C.argmax(axis=0))
    np.testing.assert_allclose(S - r_a[:, None], C, atol=1e-5)
    fi, bi = matching._csls_candidates(ZA, ZB, T=20)
    np.testing.assert_array_equal(fi[:, 0], C.argmax(axis=1))
    np.testing.assert_array_equal(bi[:, 0], C.argmax(axis=0))
    # Best first, among each row's 20 nearest by cosine.
    scores = np.take_along_axis(C, fi, axis=1)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_check_ranks_count_better_candidates_both_ways():
    rng = np.random.default_rng(7)
    ZA = _unit(rng.standard_normal((30, 4)))
    ZB = _unit(rng.standard_normal((25, 4)))
    _, _, S, r_a = matching._csls_neighbours(ZA, ZB)
    C = _csls(ZA, ZB)
    na, nb, n = 20, 15, 5
    ranks = matching._check_ranks(S, r_a, na, nb, n)
    h = np.arange(n)
    true = C[na + h, nb + h]
    expected_ab = (C[na + h] > true[:, None]).sum(axis=1)
    expected_ba = (C[:, nb + h] > true[None, :]).sum(axis=0)
    np.testing.assert_allclose(ranks, np.log1p(np.concatenate([expected_ab, expected_ba])))


def test_sorted_profiles_do_not_depend_on_the_coordinates():
    rng = np.random.default_rng(8)
    Z = rng.standard_normal((300, 12))
    Q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    np.testing.assert_allclose(matching._sorted_profiles(Z),
                               matching._sorted_profiles(Z @ Q), atol=1e-4)


def test_quadrature_preserves_dot_products_of_smooth_rows():
    positions, weights = matching._quadrature(1000, 256, 64)
    a = np.sort(np.random.default_rng(9).standard_normal(1000))
    b = np.sort(np.random.default_rng(10).standard_normal(1000))
    approx = np.sum(weights**2 * a[positions] * b[positions])
    assert abs(approx - a @ b) < 0.01 * abs(a @ b)
    assert weights[:64].tolist() == [1.0] * 64  # the ends kept whole


def test_matching_is_public():
    assert latentspace.Matching._fields == (
        "method", "accepted", "n_pairs", "criterion", "rounds", "history")
