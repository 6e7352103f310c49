"""Slices: PCA / random / through-points planes, grid convention, pytree behaviour, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import geometry as G


def _data(n=200, d=6, seed=0):
    rng = np.random.default_rng(seed)
    # anisotropic cloud: principal axes e0 (sd 3) and e1 (sd 2), the rest sd 0.1
    x = rng.normal(size=(n, d)) * np.array([3.0, 2.0] + [0.1] * (d - 2))
    return (x + 5.0).astype(np.float32)


def test_pca_slice_matches_numpy_svd():
    x = _data()
    slc = G.pca_slice(x, resolution=9, padding=0.1)
    x64 = x.astype(np.float64)
    mu = x64.mean(0)
    _, _, vt = np.linalg.svd(x64 - mu, full_matrices=False)
    ref = vt[:2].T
    basis = np.asarray(slc.basis, np.float64)
    # same plane and axes up to sign; our sign: largest-magnitude entry positive
    for k in range(2):
        s = np.sign(ref[np.argmax(np.abs(ref[:, k])), k])
        np.testing.assert_allclose(basis[:, k], s * ref[:, k], atol=1e-6)
        assert basis[np.argmax(np.abs(basis[:, k])), k] > 0
    np.testing.assert_allclose(np.asarray(slc.origin), mu, rtol=1e-6, atol=1e-6)
    u = (x64 - mu) @ basis
    lo, hi = u.min(0), u.max(0)
    pad = 0.1 * (hi - lo)
    np.testing.assert_allclose(
        slc.extent, [lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1]], rtol=1e-5
    )
    np.testing.assert_allclose(slc.project(x), u, atol=1e-4)


def test_pca_slice_gram_path_for_wide_data():
    # N <= D uses the N x N Gram matrix; it must span the same plane as the SVD
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(12, 40)) * np.linspace(3, 0.1, 40)).astype(np.float32)
    slc = G.pca_slice(x, resolution=4)
    _, _, vt = np.linalg.svd(x - x.mean(0, dtype=np.float64), full_matrices=False)
    proj = np.asarray(slc.basis, np.float64).T @ vt[:2].T  # 2x2 rotation/reflection
    np.testing.assert_allclose(np.abs(proj), np.eye(2), atol=1e-5)


def test_grid_convention_and_points():
    slc = G.Slice(
        origin=np.array([1.0, 2.0, 3.0], np.float32),
        basis=np.eye(3, 2, dtype=np.float32),
        u_min=np.array([-1.0, 0.0], np.float32),
        u_max=np.array([1.0, 4.0], np.float32),
        resolution=3,
        input_shape=(3,),
    )
    u1, u2 = slc.coords()
    np.testing.assert_array_equal(u1, [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(u2, [0.0, 2.0, 4.0])
    pts = np.asarray(slc.points())
    assert pts.shape == (9, 3)
    # point p = i*R + j sits at (u1[j], u2[i]): column j along e0, row i along e1
    np.testing.assert_array_equal(pts[1 * 3 + 2], [1.0 + 1.0, 2.0 + 2.0, 3.0])
    grid = np.asarray(slc.points(flat=False))
    assert grid.shape == (3, 3, 3)
    np.testing.assert_array_equal(grid.reshape(9, 3), pts)
    np.testing.assert_array_equal(slc.extent, [-1.0, 1.0, 0.0, 4.0])


def test_image_inputs_are_flattened_and_reshaped():
    x = np.random.default_rng(0).normal(size=(30, 4, 4, 3)).astype(np.float32)
    slc = G.pca_slice(x, resolution=5)
    assert slc.input_shape == (4, 4, 3) and slc.dim == 48
    assert slc.points(flat=False).shape == (5, 5, 4, 4, 3)
    u = jnp.array([[0.5, -0.25]])
    np.testing.assert_allclose(
        np.asarray(slc.to_input(u)).reshape(1, -1),
        np.asarray(slc.origin)[None] + np.asarray(u) @ np.asarray(slc.basis).T,
        atol=1e-6,
    )


def test_random_slice_is_orthonormal_and_seeded():
    x = _data()
    a = G.random_slice(jax.random.key(3), x, resolution=8, scale=2.0)
    b = G.random_slice(jax.random.key(3), x, resolution=8, scale=2.0)
    c = G.random_slice(jax.random.key(4), x, resolution=8)
    p = np.asarray(a.basis, np.float64)
    np.testing.assert_allclose(p.T @ p, np.eye(2), atol=1e-6)
    np.testing.assert_array_equal(a.basis, b.basis)
    assert not np.allclose(a.basis, c.basis)
    np.testing.assert_array_equal(a.extent, [-2.0, 2.0, -2.0, 2.0])
    # without scale the grid covers the projected data
    u = c.project(x)
    assert np.all(u.min(0) >= c.extent[[0, 2]]) and np.all(u.max(0) <= c.extent[[1, 3]])
    one = G.random_slice(jax.random.key(0), x[:1], resolution=4, scale=1.0)
    np.testing.assert_array_equal(one.origin, x[0])


def test_points_slice_three_points():
    x0, x1, x2 = (np.array(v, np.float32) for v in ([1, 1, 0, 0], [3, 1, 0, 0], [1, 2, 5, 0]))
    slc = G.points_slice(x0, x1, x2, resolution=11, padding=0.0)
    u = slc.project(np.stack([x0, x1, x2]))
    np.testing.assert_allclose(u, [[0, 0], [2, 0], [0, np.sqrt(26)]], atol=1e-5)
    np.testing.assert_allclose(slc.extent, [0, 2, 0, np.sqrt(26)], atol=1e-5)
    # the chosen points lie on the plane: mapping back reproduces them
    np.testing.assert_allclose(np.asarray(slc.to_input(jnp.asarray(u))), [x0, x1, x2], atol=1e-5)


def test_points_slice_two_points_needs_key():
    x0, x1 = np.zeros(5, np.float32), np.ones(5, np.float32)
    with pytest.raises(ValueError, match="key="):
        G.points_slice(x0, x1, resolution=4)
    slc = G.points_slice(x0, x1, resolution=4, key=jax.random.key(0), padding=0.0)
    w = np.sqrt(5.0)
    np.testing.assert_allclose(slc.extent, [0, w, -w / 2, w / 2], atol=1e-5)
    p = np.asarray(slc.basis, np.float64)
    np.testing.assert_allclose(p.T @ p, np.eye(2), atol=1e-6)


def test_slice_is_a_pytree_with_static_resolution():
    slc = G.pca_slice(_data(), resolution=7)
    leaves, treedef = jax.tree.flatten(slc)
    assert len(leaves) == 4
    moved = jax.tree.map(lambda l: l + 1.0, slc)
    assert moved.resolution == 7 and moved.input_shape == slc.input_shape
    other = G.pca_slice(_data(seed=1), resolution=7)
    assert jax.tree.structure(other) == treedef
    assert jax.tree.structure(G.pca_slice(_data(), resolution=8)) != treedef
    stacked = G.stack_slices([slc, other])
    assert stacked.num_slices == 2 and stacked.extent.shape == (2, 4)
    np.testing.assert_array_equal(stacked[1].basis, other.basis)


@pytest.mark.parametrize("resolution", [1, 0, -3])
def test_rejects_small_resolution(resolution):
    with pytest.raises(ValueError, match="resolution must be an int >= 2"):
        G.pca_slice(_data(), resolution=resolution)


def test_rejects_non_orthonormal_basis():
    with pytest.raises(ValueError, match="orthonormal"):
        G.Slice(
            origin=np.zeros(3, np.float32),
            basis=np.array([[1, 0.1], [0, 1], [0, 0]], np.float32),
            u_min=np.zeros(2, np.float32),
            u_max=np.ones(2, np.float32),
            resolution=4,
            input_shape=(3,),
        )
    with pytest.raises(ValueError, match="basis must have shape"):
        G.Slice(
            origin=np.zeros(3, np.float32),
            basis=np.eye(3, dtype=np.float32),
            u_min=np.zeros(2, np.float32),
            u_max=np.ones(2, np.float32),
            resolution=4,
            input_shape=(3,),
        )


def test_rejects_degenerate_and_nan_data():
    with pytest.raises(ValueError, match="rank >= 2"):
        G.pca_slice(np.ones((10, 4), np.float32), resolution=4)
    t = np.linspace(0, 1, 20)[:, None]
    line = (t * np.array([[1.0, 2.0, -1.0]]) + 0.5).astype(np.float32)
    with pytest.raises(ValueError, match="rank >= 2"):
        G.pca_slice(line, resolution=4)
    bad = _data()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        G.pca_slice(bad, resolution=4)
    with pytest.raises(ValueError, match="collinear"):
        G.points_slice(np.zeros(3), np.ones(3), 2 * np.ones(3), resolution=4)
    with pytest.raises(ValueError, match="coincident"):
        G.points_slice(np.ones(3), np.ones(3), np.zeros(3), resolution=4)
    with pytest.raises(ValueError, match="padding"):
        G.pca_slice(_data(), resolution=4, padding=-0.1)
    with pytest.raises(ValueError, match="scale="):
        G.random_slice(jax.random.key(0), _data()[:1], resolution=4)
    with pytest.raises(ValueError, match="share resolution"):
        G.stack_slices([G.pca_slice(_data(), resolution=4), G.pca_slice(_data(), resolution=5)])
