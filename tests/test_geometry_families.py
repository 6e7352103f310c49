"""Slice families: every kind, determinism per key, orthonormal planes, planes through the drawn
inputs, errors; the K-slice sweep and per-slice metrics against K single sweeps (exactly);
memory flat in K."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_geometry_sweep import init_mlp, mlp, stack  # tests/ is on sys.path (rootdir conftest)

from bq_jax import geometry as G
from bq_jax.geometry import engine as E
from bq_jax.geometry.slices import ORTHONORMAL_ATOL


def _data(n=60, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * np.linspace(3.0, 0.5, d)).astype(np.float32)


def _family(kind, key=0, count=4, x=None, resolution=10):
    x = _data() if x is None else x
    return G.slice_family(jax.random.key(key), x, kind=kind, count=count, resolution=resolution)


def _arrays(fam):
    return [np.asarray(a) for a in (fam.origin, fam.basis, fam.u_min, fam.u_max)]


def _distance_to_plane(slc, p):
    """Euclidean distance of flat point ``p`` to the plane of a single slice (float64)."""
    o = np.asarray(slc.origin, np.float64)
    b = np.asarray(slc.basis, np.float64)
    r = p.astype(np.float64) - o
    return np.linalg.norm(r - b @ (b.T @ r))


def test_kinds_are_the_documented_ones():
    assert G.FAMILY_KINDS == ("pca", "random", "triplet", "pair")


@pytest.mark.parametrize("kind", G.FAMILY_KINDS)
def test_every_kind_is_a_stacked_orthonormal_family(kind):
    fam = _family(kind)
    assert fam.stacked and fam.num_slices == 4 and fam.resolution == 10
    assert fam.input_shape == (8,)
    basis = np.asarray(fam.basis, np.float64)
    gram = np.swapaxes(basis, -1, -2) @ basis
    assert np.max(np.abs(gram - np.eye(2))) <= ORTHONORMAL_ATOL
    assert np.all(np.asarray(fam.u_max) > np.asarray(fam.u_min))


@pytest.mark.parametrize("kind", G.FAMILY_KINDS)
def test_same_key_same_family_and_prefix_property(kind):
    a, b = _arrays(_family(kind, key=3)), _arrays(_family(kind, key=3))
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    # plane k depends only on (key, k): the family of 2 is the first 2 planes of the family of 4
    short = _arrays(_family(kind, key=3, count=2))
    for u, v in zip(short, a, strict=True):
        np.testing.assert_array_equal(u, v[:2])


@pytest.mark.parametrize("kind", ["random", "triplet", "pair"])
def test_different_keys_give_different_planes(kind):
    a, b = _family(kind, key=0), _family(kind, key=1)
    for k in range(4):
        # different planes: the projection of one basis onto the other is not a rotation
        proj = np.asarray(a.basis[k], np.float64).T @ np.asarray(b.basis[k], np.float64)
        assert abs(abs(np.linalg.det(proj)) - 1.0) > 1e-3, (kind, k)
    # and the planes within a family differ from each other
    b0, b1 = np.asarray(a.basis[0], np.float64), np.asarray(a.basis[1], np.float64)
    assert abs(abs(np.linalg.det(b0.T @ b1)) - 1.0) > 1e-3


def test_pca_family_is_the_principal_planes_and_ignores_the_key():
    x = _data()
    fam = _family("pca", count=3, x=x)
    np.testing.assert_array_equal(_arrays(_family("pca", key=9, count=3, x=x))[1], fam.basis)
    first = G.pca_slice(x, resolution=10)
    for u, v in zip(_arrays(fam[0]), _arrays(first), strict=True):
        np.testing.assert_array_equal(u, v)
    x64 = x.astype(np.float64)
    _, _, vt = np.linalg.svd(x64 - x64.mean(0), full_matrices=False)
    for k in range(3):
        proj = np.asarray(fam.basis[k], np.float64).T @ vt[2 * k : 2 * k + 2].T
        np.testing.assert_allclose(np.abs(proj), np.eye(2), atol=1e-5)
        np.testing.assert_allclose(fam.origin[k], x64.mean(0), rtol=1e-6, atol=1e-6)


def test_random_family_is_random_slices_of_folded_keys():
    x = _data()
    fam = _family("random", key=7, x=x)
    for k in range(4):
        ref = G.random_slice(jax.random.fold_in(jax.random.key(7), k), x, resolution=10)
        for u, v in zip(_arrays(fam[k]), _arrays(ref), strict=True):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("kind, m", [("triplet", 3), ("pair", 2)])
def test_point_planes_pass_through_distinct_inputs(kind, m):
    x = _data()
    fam = _family(kind, key=2, count=6, x=x)
    for k in range(6):
        slc = fam[k]
        dist = np.array([_distance_to_plane(slc, p) for p in x])
        on_plane = np.flatnonzero(dist < 1e-4)
        assert len(on_plane) >= m, (kind, k, np.sort(dist)[:4])
        # the origin is one of the drawn inputs, and every drawn input lies inside the grid
        assert np.min(np.linalg.norm(x - np.asarray(slc.origin), axis=1)) < 1e-5
        u = slc.project(x[on_plane])
        assert np.all(u >= np.asarray(slc.u_min) - 1e-4)
        assert np.all(u <= np.asarray(slc.u_max) + 1e-4)


def test_duplicate_inputs_are_redrawn_and_all_identical_inputs_raise():
    x = _data(n=6)
    dup = np.concatenate([x[:1]] * 30 + [x], axis=0)  # mostly one repeated input
    fam = G.slice_family(jax.random.key(0), dup, kind="triplet", count=5, resolution=8)
    assert fam.num_slices == 5
    same = np.repeat(x[:1], 10, axis=0)
    with pytest.raises(ValueError, match="spanning a plane"):
        G.slice_family(jax.random.key(0), same, kind="pair", count=1, resolution=8)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(kind="grid"), ValueError, r"kind must be one of \('pca', 'random'"),
        (dict(count=0), ValueError, "count must be an int >= 1"),
        (dict(count=2.0), TypeError, "count must be an int"),
        (dict(resolution=1), ValueError, "resolution must be an int >= 2"),
        (dict(kind="pca", count=5), ValueError, "needs D >= 10"),
        (dict(padding=-1.0), ValueError, "padding must be a finite float >= 0"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    args = dict(kind="random", count=2, resolution=8, **{})
    args.update(kwargs)
    with pytest.raises(error, match=match):
        G.slice_family(jax.random.key(0), _data(), **args)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="at least 3 inputs"):
        G.slice_family(jax.random.key(0), _data(n=2), kind="triplet", count=1, resolution=8)
    bad = _data()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        G.slice_family(jax.random.key(0), bad, kind="pair", count=1, resolution=8)
    with pytest.raises(ValueError, match="non-empty batch"):
        G.slice_family(jax.random.key(0), np.zeros(5), kind="random", count=1, resolution=8)


# -- sweeps over a family ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    x = np.random.default_rng(3).normal(size=(80, 5)).astype(np.float32)
    float_params = init_mlp(jax.random.key(0))
    # variants: the float model with quantization-like perturbations of growing size
    variants = [
        jax.tree.map(lambda w, s=s: jnp.round(w * s) / s, float_params) for s in (64.0, 8.0, 2.0)
    ]
    return x, float_params, stack(variants)


@pytest.mark.parametrize("mode", ["map", "vmap"])
def test_stacked_family_sweep_equals_single_sweeps_exactly(model, mode):
    x, _, params = model
    fam = G.slice_family(jax.random.key(1), x, kind="triplet", count=5, resolution=16)
    labels = np.asarray(G.sweep_labels(mlp, params, fam, chunk_size=37, variant_batching=mode))
    logits = np.asarray(G.sweep_logits(mlp, params, fam, chunk_size=37, variant_batching=mode))
    assert labels.shape == (5, 3, 16, 16)
    for k in range(5):
        one = G.sweep_labels(mlp, params, fam[k], chunk_size=37, variant_batching=mode)
        np.testing.assert_array_equal(labels[k], np.asarray(one))
        one_z = G.sweep_logits(mlp, params, fam[k], chunk_size=37, variant_batching=mode)
        np.testing.assert_array_equal(logits[k], np.asarray(one_z))


@pytest.mark.parametrize("mode", ["map", "vmap"])
def test_family_metrics_equal_metrics_of_single_sweeps_exactly(model, mode):
    x, float_params, params = model
    fam = G.slice_family(jax.random.key(2), x, kind="triplet", count=6, resolution=16)
    m = G.family_metrics(mlp, float_params, params, fam, chunk_size=50, variant_batching=mode)
    assert set(m) == {*G.FAMILY_METRICS, "float_triple_junction_count"}
    float_stack = stack([float_params])
    for k in range(6):
        fl = G.sweep_labels(mlp, float_stack, fam[k], chunk_size=50)[0]
        ql = G.sweep_labels(mlp, params, fam[k], chunk_size=50)
        jac = G.boundary_jaccard_distance(G.boundary_mask(fl), G.boundary_mask(ql))
        np.testing.assert_array_equal(m["boundary_jaccard_distance"][k], np.asarray(jac))
        np.testing.assert_array_equal(m["grid_change"][k], np.asarray(G.grid_change(fl, ql)))
        np.testing.assert_array_equal(
            m["triple_junction_count"][k], np.asarray(G.triple_junction_count(ql))
        )
        assert m["float_triple_junction_count"][k] == int(G.triple_junction_count(fl))
    # the perturbations grow, so on average the boundary moves more (a sanity check of order)
    jac_mean = m["boundary_jaccard_distance"].mean(0)
    assert jac_mean[0] <= jac_mean[2] and jac_mean[2] > 0


def test_family_metrics_chunk_size_and_single_slice(model):
    x, float_params, params = model
    fam = G.slice_family(jax.random.key(4), x, kind="pair", count=6, resolution=16)
    a = G.family_metrics(mlp, float_params, params, fam, chunk_size=50)
    b = G.family_metrics(mlp, float_params, params, fam, chunk_size=256)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    one = G.family_metrics(mlp, float_params, params, fam[1], chunk_size=50)
    for k in a:
        np.testing.assert_array_equal(one[k], a[k][1:2])


def test_family_metrics_raise_on_nan_logits(model):
    x, float_params, params = model
    bad = jax.tree.map(lambda l: l.at[1].set(jnp.nan), params)
    fam = G.slice_family(jax.random.key(4), x, kind="random", count=6, resolution=16)
    with pytest.raises(ValueError, match=r"NaN or inf logits .*\(slice 0, variant 1\)"):
        G.family_metrics(mlp, float_params, bad, fam, chunk_size=50)


def test_family_metrics_memory_is_flat_in_the_number_of_slices(model):
    x, float_params, params = model
    float_stack = stack([float_params])
    temp = {}
    for k in (2, 32):
        fam = G.slice_family(jax.random.key(0), x, kind="random", count=k, resolution=64)
        compiled = E.family_metrics_jit.lower(
            float_stack, params, fam, apply_fn=mlp, chunk_size=256, mode="map"
        ).compile()
        mem = compiled.memory_analysis()
        temp[k] = mem.temp_size_in_bytes
        # only [K, V] numbers leave the call (4 metrics + the finite flags), not K maps
        assert mem.output_size_in_bytes <= k * 3 * 4 * 4 + k * 4 + k * 3 + 64
    # 16x the slices; one slice's maps ([V + 1, 64, 64] int32 = 64 KiB) are reused, so the
    # scratch grows by the per-slice outputs of the loop only
    assert temp[32] - temp[2] <= 30 * (3 * 4 * 4 + 4 + 3) + 4096, temp
