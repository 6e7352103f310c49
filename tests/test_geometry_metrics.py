"""Grid and band metrics: hand-computed label maps, an analytic triple junction, numpy references,
empty-mask rules, tolerance, jit == eager, batched == loop."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import geometry as G

# three unit class directions 120 degrees apart: straight boundaries meeting at one triple point
W3 = np.array([[np.cos(t), np.sin(t)] for t in np.deg2rad([0.0, 120.0, 240.0])], np.float32)


def linear3(params, x):
    """z_k = w_k . (x - p): three sectors meeting at the triple point p."""
    return (x - params["p"][None]) @ params["w"].T


def _np_boundary_mask(labels):
    out = np.zeros(labels.shape, bool)
    out[..., :, :-1] |= labels[..., :, :-1] != labels[..., :, 1:]
    out[..., :-1, :] |= labels[..., :-1, :] != labels[..., 1:, :]
    return out


def _np_triple(labels):
    r, c = labels.shape[-2:]
    out = np.zeros(labels.shape[:-2] + (max(r - 1, 0), max(c - 1, 0)), bool)
    for idx in np.ndindex(*out.shape):
        *lead, i, j = idx
        block = labels[(*lead, slice(i, i + 2), slice(j, j + 2))]
        out[idx] = len(set(block.ravel().tolist())) >= 3
    return out


# 6x6 hand-written maps: a vertical split, the same split one column right, a horizontal split
VERT = np.array([[0, 0, 0, 1, 1, 1]] * 6)
VERT_SHIFT = np.array([[0, 0, 0, 0, 1, 1]] * 6)
HORIZ = VERT.T.copy()


def test_boundary_mask_hand_example():
    m = np.asarray(G.boundary_mask(VERT))
    expected = np.zeros((6, 6), bool)
    expected[:, 2] = True  # column 2 differs from its right neighbour
    np.testing.assert_array_equal(m, expected)
    np.testing.assert_array_equal(G.boundary_mask(HORIZ), expected.T)


def test_boundary_jaccard_hand_values():
    a, s, h = (G.boundary_mask(x) for x in (VERT, VERT_SHIFT, HORIZ))
    # shifted by one column: disjoint masks of 6 points each
    assert float(G.boundary_jaccard_distance(a, s)) == 1.0
    # rotated by 90 degrees: column 2 and row 2 share one point of 11
    np.testing.assert_allclose(float(G.boundary_jaccard_distance(a, h)), 1 - 1 / 11, rtol=1e-6)
    # tolerance 1: every shifted point has a partner within one cell -> 0
    assert float(G.boundary_jaccard_distance(a, s, tolerance=1)) == 0.0
    # tolerance 1, rotated: 3 of 6 points each side matched, I = 3, J = 1 - 3 / (12 - 3)
    np.testing.assert_allclose(
        float(G.boundary_jaccard_distance(a, h, tolerance=1)), 2 / 3, rtol=1e-6
    )
    # symmetric, and identical maps give 0
    assert float(G.boundary_jaccard_distance(h, a, tolerance=1)) == float(
        G.boundary_jaccard_distance(a, h, tolerance=1)
    )
    assert float(G.boundary_jaccard_distance(a, a)) == 0.0


def test_boundary_jaccard_tolerance_is_symmetric_match_count():
    rng = np.random.default_rng(0)
    for _ in range(5):
        la, lb = rng.integers(0, 3, (2, 9, 9))
        a, b = _np_boundary_mask(la), _np_boundary_mask(lb)
        for d in (0, 1, 2):
            pad = np.pad(b, d)
            dil_b = np.zeros_like(b)
            pad_a = np.pad(a, d)
            dil_a = np.zeros_like(a)
            for di, dj in itertools.product(range(2 * d + 1), repeat=2):
                dil_b |= pad[di : di + 9, dj : dj + 9]
                dil_a |= pad_a[di : di + 9, dj : dj + 9]
            inter = 0.5 * ((a & dil_b).sum() + (b & dil_a).sum())
            ref = 1 - inter / (a.sum() + b.sum() - inter)
            got = float(G.boundary_jaccard_distance(a, b, tolerance=d))
            np.testing.assert_allclose(got, ref, rtol=1e-6)
        # non-increasing in the tolerance
        js = [float(G.boundary_jaccard_distance(a, b, tolerance=d)) for d in range(4)]
        assert all(x >= y for x, y in zip(js, js[1:], strict=False))


def test_empty_mask_rules():
    empty = G.boundary_mask(np.zeros((5, 5), np.int32))
    assert not bool(empty.any())
    full = G.boundary_mask(VERT[:5, :5])
    assert float(G.boundary_jaccard_distance(empty, empty)) == 0.0
    assert float(G.boundary_jaccard_distance(empty, full)) == 1.0
    assert float(G.boundary_jaccard_distance(full, empty, tolerance=2)) == 1.0
    assert float(G.boundary_jaccard_distance(empty, empty, tolerance=2)) == 0.0


def test_triple_junction_hand_example():
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
    tj = np.asarray(G.triple_junctions(labels))
    expected = np.zeros((3, 3), bool)
    expected[1, 1] = True  # the block at rows 1-2, columns 1-2 holds {0, 1, 2}
    np.testing.assert_array_equal(tj, expected)
    assert int(G.triple_junction_count(labels)) == 1
    assert int(G.triple_junction_count(VERT)) == 0


# 4x4 hand-written maps with their boundary masks and triple junctions
_L1 = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 1, 1], [2, 2, 2, 2]])
_B1 = np.array([[0, 1, 0, 0], [1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]], bool)
_J1 = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], bool)
_L2 = np.array([[0, 1, 2, 2], [3, 3, 2, 2], [3, 3, 3, 3], [3, 3, 3, 0]])
_B2 = np.array([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 1, 0]], bool)
_J2 = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 0]], bool)


@pytest.mark.parametrize(("labels", "mask", "junctions"), [(_L1, _B1, _J1), (_L2, _B2, _J2)])
def test_boundary_mask_and_junctions_hand_written(labels, mask, junctions):
    np.testing.assert_array_equal(G.boundary_mask(labels), mask)
    np.testing.assert_array_equal(G.triple_junctions(labels), junctions)
    assert int(G.triple_junction_count(labels)) == junctions.sum()


def test_grid_masks_of_non_square_batched_and_degenerate_maps():
    stack = np.random.default_rng(0).integers(0, 4, size=(5, 7, 6))
    masks, tjs = G.boundary_mask(stack), G.triple_junctions(stack)
    assert masks.shape == (5, 7, 6) and tjs.shape == (5, 6, 5)
    np.testing.assert_array_equal(masks, _np_boundary_mask(stack))
    np.testing.assert_array_equal(tjs, _np_triple(stack))
    counts = G.triple_junction_count(stack)
    assert counts.dtype == jnp.int32 and counts.shape == (5,)
    np.testing.assert_array_equal(counts, _np_triple(stack).sum(axis=(1, 2)))
    assert G.triple_junctions(np.zeros((1, 4), int)).shape == (0, 3)
    assert int(G.triple_junction_count(np.zeros((1, 4), int))) == 0
    assert not G.boundary_mask(np.full((3, 3), 2)).any()


def test_boundary_jaccard_is_the_distance_under_both_names():
    assert G.boundary_jaccard is G.boundary_jaccard_distance
    a, b = G.boundary_mask(_L1), G.boundary_mask(_L2)
    inter, union = np.sum(_B1 & _B2), np.sum(_B1 | _B2)
    np.testing.assert_allclose(float(G.boundary_jaccard(a, b)), 1 - inter / union, rtol=1e-6)


def test_linear_three_class_junction_contains_the_analytic_triple_point():
    # grid [-1, 1]^2 at R = 21 (spacing 0.1); triple point at the centre of cell (7, 13)
    p_star = np.array([0.35, -0.25], np.float32)
    slc = G.Slice(
        origin=np.zeros(2, np.float32),
        basis=np.eye(2, dtype=np.float32),
        u_min=np.array([-1.0, -1.0], np.float32),
        u_max=np.array([1.0, 1.0], np.float32),
        resolution=21,
        input_shape=(2,),
    )
    params = jax.tree.map(lambda l: jnp.asarray(l)[None], {"w": W3, "p": p_star})
    labels = np.asarray(G.sweep_labels(linear3, params, slc))[0]
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    cells = np.argwhere(np.asarray(G.triple_junctions(labels)))
    np.testing.assert_array_equal(cells, [[7, 13]])
    u1, u2 = (np.asarray(c) for c in slc.coords())
    i, j = cells[0]
    assert u1[j] < p_star[0] < u1[j + 1] and u2[i] < p_star[1] < u2[i + 1]
    # and the boundary mask is made of the three straight rays: every boundary point lies
    # within one grid step of a ray from p_star
    pts = np.stack(np.meshgrid(u1, u2), -1)[np.asarray(G.boundary_mask(labels))]
    rel = pts - p_star
    ray_dirs = np.deg2rad([60.0, 180.0, 300.0])
    dist = np.min([np.abs(rel[:, 0] * np.sin(t) - rel[:, 1] * np.cos(t)) for t in ray_dirs], axis=0)
    assert np.all(dist <= 0.1 * np.sqrt(2) + 1e-6)


def test_grid_metrics_match_numpy_and_batch():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (3, 7, 7)).astype(np.int32)
    ref_float = rng.integers(0, 4, (7, 7)).astype(np.int32)
    np.testing.assert_array_equal(G.boundary_mask(labels), _np_boundary_mask(labels))
    np.testing.assert_array_equal(G.triple_junctions(labels), _np_triple(labels))
    gc = np.asarray(G.grid_change(ref_float, labels))
    np.testing.assert_allclose(gc, (labels != ref_float[None]).mean(axis=(1, 2)), rtol=1e-6)
    mf, mq = G.boundary_mask(ref_float), G.boundary_mask(labels)
    batched = np.asarray(G.boundary_jaccard_distance(mf, mq, tolerance=1))
    loop = [float(G.boundary_jaccard_distance(mf, mq[v], tolerance=1)) for v in range(3)]
    np.testing.assert_array_equal(batched, loop)
    # vmap over the variant axis gives the same numbers
    vm = jax.vmap(lambda m: G.boundary_jaccard_distance(mf, m, tolerance=1))(mq)
    np.testing.assert_array_equal(vm, batched)


def test_metrics_jit_equals_eager():
    rng = np.random.default_rng(2)
    la, lb = (jnp.asarray(x) for x in rng.integers(0, 3, (2, 2, 8, 8)).astype(np.int32))

    def all_metrics(a, b):
        ma, mb = G.boundary_mask(a), G.boundary_mask(b)
        return (
            G.boundary_jaccard_distance(ma, mb),
            G.boundary_jaccard_distance(ma, mb, tolerance=2),
            G.grid_change(a, b),
            G.triple_junction_count(a),
        )

    with jax.disable_jit():  # the public functions are jitted; run their bodies op by op
        eager = all_metrics(la, lb)
    jitted = jax.jit(all_metrics)(la, lb)
    for e, j in zip(eager, jitted, strict=True):
        np.testing.assert_array_equal(e, j)


def test_flip_rate_and_margin():
    za = jnp.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 5.0], [2.0, 2.5, 0.0]])
    zb = jnp.array([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0], [1.0, 0.0, 5.0], [2.5, 2.0, 0.0]])
    assert float(G.flip_rate(za, zb)) == 0.5
    assert float(G.flip_rate(jnp.argmax(za, -1), zb)) == 0.5
    top = jnp.argmax(za, -1)
    np.testing.assert_allclose(G.margin(za, top), [2.0, 1.0, 4.0, 0.5])
    np.testing.assert_allclose(G.margin(zb, top), [2.0, -1.0, 4.0, -0.5])
    # variants [V, N, K] against a float top [N]
    both = G.margin(jnp.stack([za, zb]), top)
    assert both.shape == (2, 4)
    a, b = G.top2(za)
    np.testing.assert_array_equal(a, [0, 1, 2, 1])
    np.testing.assert_array_equal(b, [1, 2, 0, 0])
    np.testing.assert_allclose(G.pair_gap(zb, a, b), [2.0, -1.0, 4.0, -0.5])


def test_band_metrics_hand_values():
    mf_cal = jnp.array([0.1, 0.2, 0.3, 0.4, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    # linear interpolation: q=0.2 -> 0.2 + 0.8 * 0.1 = 0.28; q=0.4 -> 0.4 + 0.6 * 0.6 = 0.76
    tau = float(G.band_threshold(mf_cal, quantile=0.2))
    np.testing.assert_allclose(tau, 0.28, rtol=1e-6)
    np.testing.assert_allclose(tau, np.quantile(np.asarray(mf_cal), 0.2), rtol=1e-6)
    mf = jnp.array([0.05, -0.35, 0.5, 2.0])
    np.testing.assert_array_equal(G.boundary_band(mf, mf_cal, quantile=0.2), [1, 0, 0, 0])
    np.testing.assert_array_equal(G.boundary_band(mf, mf_cal, quantile=0.4), [1, 1, 1, 0])
    band = jnp.array([True, True, False, True])
    zf = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 1.5], [3.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    # point 0: a=0, b=1, order flips; point 1: a=2, b=1, kept but label changes to 0;
    # point 2 (outside the band): flips; point 3: a=1, b=0 (tie with 2 -> lower index), kept
    zq = jnp.array([[1.0, 2.0, 0.0], [5.0, 1.0, 1.5], [0.0, 3.0, 0.0], [0.0, 4.0, 0.0]])
    np.testing.assert_allclose(float(G.band_flip_rate(zf, zq, band)), 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(G.pair_order_flip(zf, zq, band)), 1 / 3, rtol=1e-6)
    assert np.isnan(float(G.band_flip_rate(zf, zq, jnp.zeros(4, bool))))


def test_masked_median_matches_numpy():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(4, 11)).astype(np.float32)
    mask = rng.random((4, 11)) < 0.5
    mask[0] = False
    mask[1, :] = False
    mask[1, 3] = True
    got = np.asarray(G.masked_median(values, mask))
    assert np.isnan(got[0])
    for v in range(1, 4):
        np.testing.assert_allclose(got[v], np.median(values[v][mask[v]]), rtol=1e-6)
        np.testing.assert_allclose(
            G.masked_mean(values[v], mask[v]), values[v][mask[v]].mean(), rtol=1e-5
        )


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="tolerance must be an int >= 0"):
        G.boundary_jaccard_distance(np.zeros((3, 3), bool), np.zeros((3, 3), bool), tolerance=-1)
    with pytest.raises(ValueError, match="must agree on their last 2 axes"):
        G.boundary_jaccard_distance(np.zeros((3, 3), bool), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match=r"grid \[..., R, R\]"):
        G.boundary_mask(np.zeros(5, np.int32))
    with pytest.raises(ValueError, match="K >= 2"):
        G.margin(jnp.zeros((3, 1)), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="float_top shape"):
        G.margin(jnp.zeros((3, 4)), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match=r"quantile must be in \(0, 1\]"):
        G.band_threshold(jnp.ones(4), quantile=0.0)
