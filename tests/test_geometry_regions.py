"""Region shape metrics: connected regions against scipy.ndimage.label (3x3 structure) on random
and hand-built maps, class skips on hand-built sequences and a numpy reference, segment labels of
analytic classifiers, and the region / segment keys of compare(); jit == eager, batched == loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from bq_jax import geometry as G
from bq_jax import vocabulary

EIGHT = np.ones((3, 3), int)  # scipy's structure for 8-connectivity


def _scipy_counts(labels, k):
    labels = np.asarray(labels)
    out = np.zeros(labels.shape[:-2] + (k,), np.int64)
    for idx in np.ndindex(*labels.shape[:-2]):
        for c in range(k):
            out[idx + (c,)] = ndimage.label(labels[idx] == c, structure=EIGHT)[1]
    return out


def _scipy_partition(labels):
    """Region of every point as scipy's component number, made unique across classes."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.int64)
    offset = 0
    for c in np.unique(labels):
        comp, n = ndimage.label(labels == c, structure=EIGHT)
        out = np.where(comp > 0, comp + offset, out)
        offset += n
    return out


def _same_partition(a, b):
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    return np.array_equal(a[:, None] == a[None, :], b[:, None] == b[None, :])


# -- connected regions -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (16, 16), (12, 20)])
def test_region_counts_match_scipy_on_random_maps(shape):
    rng = np.random.default_rng(shape[0] + 100 * shape[1])
    for k in (1, 2, 3, 6):
        labels = rng.integers(0, k, size=(3, *shape))
        got = np.asarray(G.region_counts(labels, num_classes=k))
        np.testing.assert_array_equal(got, _scipy_counts(labels, k), err_msg=f"k={k}")


def test_region_counts_match_scipy_on_blobby_maps():
    # smoothed noise: few, large, irregular regions (the shape of real decision regions)
    rng = np.random.default_rng(7)
    z = ndimage.gaussian_filter(rng.normal(size=(4, 48, 48, 4)), sigma=(0, 3, 3, 0))
    labels = z.argmax(-1)
    got = np.asarray(G.region_counts(labels, num_classes=5))
    np.testing.assert_array_equal(got, _scipy_counts(labels, 5))
    assert got[..., 4].sum() == 0 and got.sum() > 4 * 4  # class 4 absent; some fragmentation


def test_components_are_scipy_regions_labelled_by_their_first_point():
    rng = np.random.default_rng(3)
    for labels in (rng.integers(0, 3, size=(8, 8)), np.eye(6, dtype=int)):
        comp = np.asarray(G.connected_components(labels))
        assert _same_partition(comp, _scipy_partition(labels))
        # each region carries the row-major flat index of its first point
        flat = np.arange(labels.size).reshape(labels.shape)
        for c in np.unique(comp):
            assert c == flat[comp == c].min()


def test_diagonal_contact_connects():
    # a one-point-wide diagonal line: one region of 1s, and the 0s on both sides touch diagonally
    # across it (4-connectivity would give 2 regions of 0s and 6 of 1s)
    line = np.eye(6, dtype=int)
    np.testing.assert_array_equal(G.region_counts(line, num_classes=2), [1, 1])
    np.testing.assert_array_equal(_scipy_counts(line, 2), [1, 1])
    # a 1-point-wide anti-diagonal wall of class 1 in a map of 0s and 2s
    m = np.array([[0, 0, 1], [0, 1, 2], [1, 2, 2]])
    np.testing.assert_array_equal(G.region_counts(m, num_classes=3), [1, 1, 1])


def test_checkerboards():
    # 1-point squares: every square touches its like diagonally -> one region per class
    board = np.indices((8, 8)).sum(0) % 2
    np.testing.assert_array_equal(G.region_counts(board, num_classes=2), [1, 1])
    # 2x2 blocks: blocks of one class still meet at corners -> one region per class
    blocks = np.kron(board[:4, :4], np.ones((2, 2), int))
    np.testing.assert_array_equal(G.region_counts(blocks, num_classes=2), [1, 1])
    # 2x2 blocks of class 1 separated by 1-point gaps of class 0: 9 islands in one sea
    islands = np.zeros((8, 8), int)
    for i in range(3):
        for j in range(3):
            islands[3 * i : 3 * i + 2, 3 * j : 3 * j + 2] = 1
    np.testing.assert_array_equal(G.region_counts(islands, num_classes=2), [1, 9])
    f = G.fragmentation(islands, num_classes=2)
    assert int(f.region_count) == 10 and int(f.classes_present) == 2
    assert int(f.excess_fragments) == 8


def test_one_class_and_empty_classes():
    f = G.fragmentation(np.full((7, 7), 2), num_classes=4)
    np.testing.assert_array_equal(f.region_counts, [0, 0, 1, 0])
    assert (int(f.region_count), int(f.classes_present), int(f.excess_fragments)) == (1, 1, 0)
    # bool maps are label maps of classes 0 / 1
    np.testing.assert_array_equal(G.region_counts(np.zeros((3, 3), bool), num_classes=2), [1, 0])
    # isolated points: every point of class 1 its own region
    pts = np.zeros((7, 7), int)
    pts[::3, ::3] = 1
    np.testing.assert_array_equal(G.region_counts(pts, num_classes=2), [1, 9])


def test_a_long_serpentine_region_is_one_region():
    # class 0 is one corridor snaking between 24 walls of class 1 (many propagation steps)
    m = np.zeros((49, 49), int)
    m[1::2, :-1] = 1
    m[3::4, :-1] = 0
    m[3::4, 1:] = 1
    np.testing.assert_array_equal(G.region_counts(m, num_classes=2), [1, 24])
    np.testing.assert_array_equal(_scipy_counts(m, 2), [1, 24])


def test_region_counts_jit_equals_eager_and_batched_equals_loop():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 4, size=(2, 3, 14, 14)).astype(np.int32)
    eager = np.asarray(G.region_counts(labels, num_classes=4))
    jitted = jax.jit(functools.partial(G.region_counts, num_classes=4))(labels)
    np.testing.assert_array_equal(jitted, eager)
    loop = np.stack(
        [
            np.stack([np.asarray(G.region_counts(labels[i, j], num_classes=4)) for j in range(3)])
            for i in range(2)
        ]
    )
    np.testing.assert_array_equal(eager, loop)
    vm = jax.vmap(functools.partial(G.region_counts, num_classes=4))(labels)
    np.testing.assert_array_equal(vm, eager)
    f = jax.jit(functools.partial(G.fragmentation, num_classes=4))(labels)
    np.testing.assert_array_equal(f.region_count, eager.sum(-1))
    np.testing.assert_array_equal(f.excess_fragments, eager.sum(-1) - (eager > 0).sum(-1))


def test_region_counts_errors():
    with pytest.raises(TypeError, match="integer label map"):
        G.region_counts(np.zeros((4, 4), np.float32), num_classes=2)
    with pytest.raises(ValueError, match=r"\[\.\.\., R, R\]"):
        G.region_counts(np.zeros(4, int), num_classes=2)
    with pytest.raises(ValueError, match=r"\[0, 2\).*from 0 to 2"):
        G.region_counts(np.array([[0, 1], [2, 0]]), num_classes=2)
    with pytest.raises(ValueError, match="from -1"):
        G.region_counts(np.array([[0, -1]]), num_classes=2)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        G.region_counts(np.zeros((2, 2), int), num_classes=0)


# -- class skips -------------------------------------------------------------------------------


def _np_skips(seq):
    seq = np.asarray(seq)
    changes = (seq[..., 1:] != seq[..., :-1]).sum(-1)
    visited = np.apply_along_axis(lambda s: len(np.unique(s)), -1, seq)
    return changes, visited, changes - (seq[..., 0] != seq[..., -1])


@pytest.mark.parametrize(
    ("seq", "changes", "visited", "skips"),
    [
        ([3], 0, 1, 0),  # one point
        ([2, 2, 2, 2], 0, 1, 0),  # no boundary crossed
        ([0, 0, 1, 1], 1, 2, 0),  # the direct path
        ([0, 1, 1, 0], 2, 2, 2),  # out and back: both changes are skips
        ([0, 2, 2, 1], 2, 3, 1),  # a detour through class 2
        ([0, 1, 0, 1, 0, 1], 5, 2, 4),  # oscillation between two classes
        ([4, 3, 2, 1, 0], 4, 5, 3),  # every class once, ends differ
    ],
)
def test_class_skips_hand_sequences(seq, changes, visited, skips):
    r = G.class_skips(np.asarray(seq))
    assert (int(r.label_changes), int(r.classes_visited), int(r.class_skips)) == (
        changes,
        visited,
        skips,
    )


def test_class_skips_match_numpy_batched_and_jitted():
    rng = np.random.default_rng(5)
    seq = rng.integers(0, 4, size=(3, 50, 12))
    seq[0] = np.repeat(rng.integers(0, 4, size=(50, 3)), 4, axis=-1)  # runs of equal labels
    r = G.class_skips(seq)
    for got, ref in zip(r, _np_skips(seq), strict=True):
        np.testing.assert_array_equal(got, ref)
    rj = jax.jit(G.class_skips)(seq)
    for a, b in zip(r, rj, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.all(np.asarray(r.class_skips) >= 0)
    assert np.all(np.asarray(r.classes_visited) - 1 <= np.asarray(r.label_changes))


def test_class_skips_errors():
    with pytest.raises(ValueError, match="S >= 1"):
        G.class_skips(np.zeros((3, 0), int))
    with pytest.raises(TypeError, match="integer class labels"):
        G.class_skips(np.zeros(4, np.float32))


# -- segments through models --------------------------------------------------------------------


def sectors(params, x):
    """Three classes around the point p: z = (x1 - p1, x2 - p2, c)."""
    x = x.reshape(x.shape[0], -1)
    c = jnp.broadcast_to(params["c"], x[:, :1].shape)
    return jnp.concatenate([x - params["p"][None], c], axis=1)


def _np_sector_labels(params, pts):
    pts = np.asarray(pts, np.float64)
    z = np.concatenate(
        [pts - np.asarray(params["p"], np.float64), np.full(pts.shape[:-1] + (1,), params["c"])],
        axis=-1,
    )
    return z.argmax(-1)


def _stack(*ps):
    return jax.tree.map(lambda *l: jnp.stack(l), *ps)


def test_segment_points_hit_both_ends_exactly():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(5, 3, 2)).astype(np.float32)
    x1 = rng.normal(size=(5, 3, 2)).astype(np.float32)
    pts = np.asarray(G.segment_points(x0, x1, num_points=7))
    assert pts.shape == (5, 7, 3, 2)
    np.testing.assert_array_equal(pts[:, 0], x0)
    np.testing.assert_array_equal(pts[:, -1], x1)
    t = np.linspace(0, 1, 7)[None, :, None, None]
    np.testing.assert_allclose(pts, x0[:, None] + t * (x1 - x0)[:, None], atol=1e-6)


def test_segment_labels_and_skips_of_an_analytic_classifier():
    rng = np.random.default_rng(1)
    params = [
        {"p": jnp.zeros(2), "c": jnp.float32(0.3)},
        {"p": jnp.array([0.05, -0.03]), "c": jnp.float32(0.25)},
    ]
    x0 = rng.uniform(-1, 1, (40, 2)).astype(np.float32)
    x1 = rng.uniform(-1, 1, (40, 2)).astype(np.float32)
    labels = np.asarray(G.segment_labels(sectors, _stack(*params), x0, x1, num_points=33))
    assert labels.shape == (2, 40, 33) and labels.dtype == np.int32
    pts = np.asarray(G.segment_points(x0, x1, num_points=33))
    for v, p in enumerate(params):
        expected = _np_sector_labels(p, pts)
        # float32 vs float64 logits may disagree only at exact ties; none here
        np.testing.assert_array_equal(labels[v], expected)
    r = G.segment_class_skips(sectors, _stack(*params), x0, x1, num_points=33)
    for got, ref in zip(r, _np_skips(labels), strict=True):
        np.testing.assert_array_equal(got, ref)
    assert np.asarray(r.class_skips).max() >= 1  # some segments detour through a third class
    # vmap over variants gives the labels of map
    vm = G.segment_labels(sectors, _stack(*params), x0, x1, num_points=33, variant_batching="vmap")
    np.testing.assert_array_equal(vm, labels)


def test_segment_errors():
    x = np.zeros((3, 2), np.float32)
    stack = _stack({"p": jnp.zeros(2), "c": jnp.float32(0.0)})
    with pytest.raises(ValueError, match="one shape"):
        G.segment_labels(sectors, stack, x, x[:2])
    with pytest.raises(ValueError, match="num_points must be an int >= 2"):
        G.segment_labels(sectors, stack, x, x, num_points=1)
    with pytest.raises(ValueError, match="NaN or inf"):
        G.segment_labels(sectors, stack, x, np.full_like(x, np.nan))
    with pytest.raises(TypeError, match="float inputs"):
        G.segment_points(np.zeros((3, 2), int), np.zeros((3, 2), int))


# -- compare(): float vs quantized --------------------------------------------------------------


def waves(params, x):
    """Two classes in a pattern of stripes: z = (sin(f x1) + a sin(f x2), 0)."""
    x = x.reshape(x.shape[0], -1).astype(params["f"].dtype)
    s = jnp.sin(params["f"] * x[:, 0]) + params["a"] * jnp.sin(params["f"] * x[:, 1])
    return jnp.stack([s, jnp.zeros_like(s)], axis=1)


def _np_wave_labels(p, pts):
    pts = np.asarray(pts, np.float64)
    f, a = float(p["f"]), float(p["a"])
    s = np.sin(f * pts[..., 0]) + a * np.sin(f * pts[..., 1])
    return (s < 0).astype(int)


@pytest.fixture(scope="module")
def wave_compare():
    float_p = {"f": jnp.float32(3.0), "a": jnp.float32(0.5)}
    variants = [
        {"f": jnp.float32(3.0), "a": jnp.float32(0.5)},  # itself
        {"f": jnp.float32(3.5), "a": jnp.float32(0.5)},  # more stripes
        {"f": jnp.float32(3.0), "a": jnp.float32(1.0)},  # stripes broken into islands
    ]
    rng = np.random.default_rng(4)
    heldout = rng.uniform(-2, 2, (300, 2)).astype(np.float32)
    calibration = rng.uniform(-2, 2, (200, 2)).astype(np.float32)
    slc = G.Slice(
        origin=np.zeros(2, np.float32),
        basis=np.eye(2, dtype=np.float32),
        u_min=np.array([-2.0, -2.0], np.float32),
        u_max=np.array([2.0, 2.0], np.float32),
        resolution=40,
        input_shape=(2,),
    )
    pairs = (heldout[:60], heldout[60:120])
    args = (waves, float_p, _stack(*variants), slc, heldout, calibration)
    res = G.compare(*args, return_maps=True, segment_pairs=pairs, segment_points=17)
    plain = G.compare(*args, return_maps=True)
    return float_p, variants, slc, pairs, res, plain


def test_compare_region_keys_are_the_fragmentation_of_the_maps(wave_compare):
    float_p, variants, slc, _, res, _ = wave_compare
    grid = np.asarray(slc.points())
    lf = _np_wave_labels(float_p, grid).reshape(40, 40)
    np.testing.assert_array_equal(res["labels_float"], lf)
    ref_f = _scipy_counts(lf, 2)
    assert res["float_region_count"].tolist() == [ref_f.sum()] * 3
    assert res["float_excess_fragments"].tolist() == [ref_f.sum() - (ref_f > 0).sum()] * 3
    for v, p in enumerate(variants):
        lq = _np_wave_labels(p, grid).reshape(40, 40)
        np.testing.assert_array_equal(res["labels"][v], lq)
        ref = _scipy_counts(lq, 2)
        assert res["region_count"][v] == ref.sum()
        assert res["excess_fragments"][v] == ref.sum() - (ref > 0).sum()
    # the float map itself has several stripes; the variants change the count
    assert res["region_count"][0] == res["float_region_count"][0] > 2
    assert res["region_count"][1] != res["region_count"][0]
    assert res["region_count"][2] != res["region_count"][0]
    assert res["region_count"].dtype == np.int64


def test_compare_segment_keys_match_a_numpy_reference(wave_compare):
    float_p, variants, _, (x0, x1), res, _ = wave_compare
    assert set(G.COMPARE_KEYS) | set(G.SEGMENT_KEYS) <= set(res)
    t = np.linspace(0.0, 1.0, 17)[None, :, None]
    pts = (1 - t) * x0[:, None].astype(np.float64) + t * x1[:, None]
    ch_f, _, sk_f = _np_skips(_np_wave_labels(float_p, pts))
    np.testing.assert_allclose(res["float_label_changes"], ch_f.mean(), rtol=1e-6)
    np.testing.assert_allclose(res["float_class_skips"], sk_f.mean(), rtol=1e-6)
    for v, p in enumerate(variants):
        ch, _, sk = _np_skips(_np_wave_labels(p, pts))
        np.testing.assert_allclose(res["label_changes"][v], ch.mean(), rtol=1e-6)
        np.testing.assert_allclose(res["class_skips"][v], sk.mean(), rtol=1e-6)
        np.testing.assert_allclose(res["label_change_delta"][v], (ch - ch_f).mean(), atol=1e-6)
        np.testing.assert_allclose(res["label_changes_differ"][v], (ch != ch_f).mean(), atol=1e-6)
    assert res["label_changes_differ"][0] == 0.0 and res["label_change_delta"][0] == 0.0
    assert res["label_changes_differ"][1] > 0.0  # more stripes: more crossings on some pairs
    assert res["segment_pairs"].tolist() == [60] * 3
    assert res["segment_points"].tolist() == [17] * 3
    for key in G.SEGMENT_KEYS:
        assert key in vocabulary.METRICS, key
    for key in G.COMPARE_KEYS:
        assert key in vocabulary.METRICS, key


def test_segment_pairs_do_not_change_the_other_keys(wave_compare):
    *_, res, plain = wave_compare
    assert not set(G.SEGMENT_KEYS) & set(plain)
    for key in plain:
        np.testing.assert_array_equal(res[key], plain[key], err_msg=key)


def test_compare_segments_with_bfloat16_variants(wave_compare):
    # variants of another dtype take compare's separate float / variant evaluations
    float_p, variants, slc, pairs, res32, _ = wave_compare
    bf16 = _stack(*(jax.tree.map(lambda l: jnp.asarray(l, jnp.bfloat16), v) for v in variants))
    rng = np.random.default_rng(4)
    heldout = rng.uniform(-2, 2, (300, 2)).astype(np.float32)
    calibration = rng.uniform(-2, 2, (200, 2)).astype(np.float32)
    res = G.compare(
        waves, float_p, bf16, slc, heldout, calibration, segment_pairs=pairs, segment_points=17
    )
    for key in ("float_label_changes", "float_class_skips", "float_region_count"):
        np.testing.assert_array_equal(res[key], res32[key], err_msg=key)
    # f = 3, 3.5, a = 0.5, 1 are exact in bfloat16; only the rounding of the logits differs
    np.testing.assert_allclose(res["label_changes"], res32["label_changes"], atol=0.05)
    np.testing.assert_allclose(res["region_count"], res32["region_count"], atol=2)


def test_compare_segment_errors(wave_compare):
    float_p, variants, slc, (x0, x1), _, _ = wave_compare
    args = (waves, float_p, _stack(*variants), slc, x0, x1)
    with pytest.raises(TypeError, match="segment_pairs must be None or a pair"):
        G.compare(*args, segment_pairs=x0)
    with pytest.raises(ValueError, match="like the slice's inputs"):
        G.compare(*args, segment_pairs=(x0[:, :1], x1[:, :1]))
    with pytest.raises(ValueError, match="num_points must be an int >= 2"):
        G.compare(*args, segment_pairs=(x0, x1), segment_points=1)


# -- the bit sweep's segment pairs ---------------------------------------------------------------


class _HeldoutOnly:
    """The part of a study's SeedContext that segment_pairs reads."""

    def __init__(self, seed, x):
        self.seed, self._x = seed, x

    def inputs(self, split):
        assert split == "heldout"
        return self._x


def test_bit_sweep_segment_pairs_are_distinct_heldout_points_fixed_by_the_seed():
    from bq_jax.studies import StudyConfig, bits_sweep

    x = np.arange(40, dtype=np.float32).reshape(20, 2)  # row i is (2i, 2i + 1)
    x0, x1 = bits_sweep.segment_pairs(_HeldoutOnly(3, x), 500)
    assert x0.shape == x1.shape == (500, 2)
    i, j = (x0[:, 0] // 2).astype(int), (x1[:, 0] // 2).astype(int)
    np.testing.assert_array_equal(x0, x[i])
    np.testing.assert_array_equal(x1, x[j])
    assert np.all(i != j)
    assert set(i) == set(range(20)) and set(j) == set(range(20))  # every point gets drawn
    again = bits_sweep.segment_pairs(_HeldoutOnly(3, x), 500)
    np.testing.assert_array_equal(again[0], x0)
    np.testing.assert_array_equal(again[1], x1)
    other = bits_sweep.segment_pairs(_HeldoutOnly(4, x), 500)
    assert not np.array_equal(other[0], x0)
    # two held-out points: every pair is the two of them
    y0, y1 = bits_sweep.segment_pairs(_HeldoutOnly(0, x[:2]), 10)
    np.testing.assert_array_equal(y0 + y1, np.broadcast_to(x[0] + x[1], (10, 2)))
    assert StudyConfig(dataset="digits").segment_pairs == 100
    with pytest.raises(ValueError, match="segment_pairs must be an int in"):
        StudyConfig(dataset="digits", segment_pairs=0)
