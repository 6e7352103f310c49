"""Local geometry and compare(): exact radii of linear classifiers, zero gradients, analytic
displacement / normal variation of a translated classifier, identical models give zeros."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import geometry as G

W3 = np.array([[np.cos(t), np.sin(t)] for t in np.deg2rad([0.0, 120.0, 240.0])], np.float32)


def linear3(params, x):
    """z_k = w_k . (x - p); with unit w_k 120 degrees apart, |w_a - w_k| = sqrt(3) for all pairs."""
    return (x.reshape(x.shape[0], -1) - params["p"][None]) @ params["w"].T


def _np_logits(params, x):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return (x - np.asarray(params["p"], np.float64)) @ np.asarray(params["w"], np.float64).T


def _exact_distance(params, x):
    """Euclidean distance from x to the boundary of its own (convex) decision region:
    min over the other classes k of the distance to the hyperplane z_a = z_k."""
    z = _np_logits(params, x)
    w = np.asarray(params["w"], np.float64)
    a = z.argmax(-1)
    out = np.full(len(x), np.inf)
    for k in range(3):
        d = (z[np.arange(len(x)), a] - z[:, k]) / np.linalg.norm(w[a] - w[k], axis=-1).clip(1e-300)
        out = np.where(a == k, out, np.minimum(out, d))
    return out


def _stack(*ps):
    return jax.tree.map(lambda *l: jnp.stack(l), *ps)


def test_margin_radius_is_the_exact_distance_for_a_linear_classifier():
    params = {"w": jnp.asarray(W3), "p": jnp.array([0.2, -0.1])}
    x = np.random.default_rng(0).uniform(-2, 2, (64, 2)).astype(np.float32)
    top = jnp.argmax(linear3(params, x), -1)
    res = G.margin_radius(linear3, params, x, float_top=top)
    np.testing.assert_allclose(res.radius, _exact_distance(params, x), atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(res.grad_norm, np.sqrt(3.0), rtol=1e-6)
    assert res.zero_gradient_count == 0
    np.testing.assert_allclose(np.linalg.norm(res.normal, axis=-1), 1.0, rtol=1e-6)
    # the normal points from the runner-up towards the top class: n = (w_a - w_b) / sqrt(3)
    z = _np_logits(params, x)
    a, b = np.argsort(-z, -1)[:, 0], np.argsort(-z, -1)[:, 1]
    np.testing.assert_allclose(res.normal, (W3[a] - W3[b]) / np.sqrt(3.0), atol=1e-6)
    # a model that disagrees with the float top class gets a negative radius
    other = {"w": jnp.asarray(W3), "p": jnp.array([0.2, -0.1]) + 0.5}
    r_other = G.margin_radius(linear3, other, x, float_top=top).radius
    flipped = np.asarray(jnp.argmax(linear3(other, x), -1) != top)
    assert flipped.any() and np.all(np.asarray(r_other)[flipped] < 0)


def test_in_slice_radius_uses_the_projected_gradient():
    # 4-D linear classifier; the slice is the (e0, e1) plane through the origin
    rng = np.random.default_rng(1)
    w = np.concatenate([W3, rng.normal(size=(3, 2)).astype(np.float32)], axis=1)
    params = {"w": jnp.asarray(w), "p": jnp.zeros(4)}
    basis = np.eye(4, 2, dtype=np.float32)
    u = rng.uniform(-1, 1, (32, 2)).astype(np.float32)
    x = np.concatenate([u, np.zeros((32, 2), np.float32)], axis=1)
    z = _np_logits(params, x)
    order = np.argsort(-z, -1)
    a, b = order[:, 0], order[:, 1]
    m = z[np.arange(32), a] - z[np.arange(32), b]
    full = G.margin_radius(linear3, params, x, float_top=jnp.asarray(a))
    np.testing.assert_allclose(full.radius, m / np.linalg.norm(w[a] - w[b], axis=-1), rtol=1e-5)
    inside = G.margin_radius(linear3, params, x, float_top=jnp.asarray(a), basis=basis)
    assert inside.normal.shape == (32, 2)
    # within the plane the model is the 2-D classifier W3: exact in-plane distance
    np.testing.assert_allclose(
        inside.radius, _exact_distance({"w": W3, "p": np.zeros(2)}, u), atol=1e-6, rtol=1e-5
    )


def test_zero_gradient_is_reported_not_divided():
    def flat_region(params, x):  # z = [relu(x0 - 1), 0.5, 0]: constant for x0 < 1
        x0 = x[:, 0]
        return jnp.stack([jax.nn.relu(x0 - 1.0), jnp.full_like(x0, 0.5), jnp.zeros_like(x0)], -1)

    x = jnp.array([[0.0, 0.0], [0.5, 1.0], [2.0, 0.0], [3.0, -1.0]])
    top = jnp.argmax(flat_region(None, x), -1)
    res = G.margin_radius(flat_region, {}, x, float_top=top)
    np.testing.assert_array_equal(res.zero_gradient, [True, True, False, False])
    np.testing.assert_allclose(res.radius, [0.0, 0.0, 0.5, 1.5], rtol=1e-6)
    np.testing.assert_allclose(res.margin, [0.5, 0.5, 0.5, 1.5], rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(res.normal))) and res.zero_gradient_count == 2


def test_displacement_and_normal_variation_formulas():
    np.testing.assert_allclose(
        G.boundary_displacement(jnp.array([1.0, -0.5]), jnp.array([0.25, 0.5])), [0.75, -1.0]
    )
    t = np.deg2rad(30.0)
    nf = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    nq = jnp.array([[np.cos(t), np.sin(t)], [0.0, -1.0], [1.0, 0.0]])
    np.testing.assert_allclose(G.normal_variation(nf, nq), [1 - np.cos(t), 2.0, 0.0], atol=1e-6)
    band = jnp.array([True, False, True])
    np.testing.assert_allclose(
        float(G.median_local_shift(jnp.array([-0.5, 9.0, 0.25]), band)), 0.375
    )


@pytest.fixture(scope="module")
def translated():
    float_p = {"w": jnp.asarray(W3), "p": jnp.zeros(2)}
    shifts = [np.zeros(2), np.array([0.05, 0.02]), np.array([-0.1, 0.07])]
    variants = [{"w": jnp.asarray(W3), "p": jnp.asarray(s, jnp.float32)} for s in shifts]
    rng = np.random.default_rng(2)
    heldout = rng.uniform(-1, 1, (400, 2)).astype(np.float32)
    calibration = rng.uniform(-1, 1, (300, 2)).astype(np.float32)
    slc = G.Slice(
        origin=np.zeros(2, np.float32),
        basis=np.eye(2, dtype=np.float32),
        u_min=np.array([-1.0, -1.0], np.float32),
        u_max=np.array([1.0, 1.0], np.float32),
        resolution=24,
        input_shape=(2,),
    )
    res = G.compare(
        linear3, float_p, _stack(*variants), slc, heldout, calibration, return_maps=True
    )
    return float_p, variants, heldout, calibration, slc, res


def test_compare_identical_model_gives_zeros(translated):
    *_, res = translated
    for key in (
        "flip_rate",
        "boundary_jaccard_distance",
        "grid_change",
        "band_flip_rate",
        "pair_order_flip",
        "median_local_shift",
    ):
        assert res[key][0] == 0.0, key
    np.testing.assert_allclose(res["normal_variation"][0], 0.0, atol=1e-6)
    assert res["triple_junction_count"][0] == res["float_triple_junction_count"][0] == 1
    np.testing.assert_array_equal(res["labels"][0], res["labels_float"])


def test_compare_matches_analytic_values_of_a_translated_classifier(translated):
    float_p, variants, heldout, calibration, slc, res = translated
    assert set(G.COMPARE_KEYS) <= set(res)
    zf = _np_logits(float_p, heldout)
    a = zf.argmax(-1)
    n = np.arange(len(heldout))

    def margin(z):
        other = np.where(np.eye(3, dtype=bool)[a], -np.inf, z)
        return z[n, a] - other.max(-1), other.argmax(-1)

    mf, bf = margin(zf)
    zc = _np_logits(float_p, calibration)
    mc = np.sort(zc, -1)[:, -1] - np.sort(zc, -1)[:, -2]
    tau = np.quantile(mc, 0.1)
    band = np.abs(mf) <= tau
    assert res["band_size"][0] == band.sum() > 0
    np.testing.assert_allclose(res["band_tau"], tau, rtol=1e-5)
    grid = np.asarray(slc.points())
    for v, p in enumerate(variants):
        zq = _np_logits(p, heldout)
        mq, bq = margin(zq)
        # radii: every margin gradient has norm sqrt(3)
        delta = (mq - mf) / np.sqrt(3.0)
        nf, nq = (W3[a] - W3[bf]) / np.sqrt(3), (W3[a] - W3[bq]) / np.sqrt(3)
        nv = 1.0 - np.sum(nf * nq, -1)
        expected = {
            "flip_rate": np.mean(zq.argmax(-1) != a),
            "band_flip_rate": np.mean(zq.argmax(-1)[band] != a[band]),
            "pair_order_flip": np.mean(
                np.sign(zq[n, a] - zq[n, np.argsort(-zf, -1)[:, 1]])[band] != 1.0
            ),
            "median_local_shift": np.median(np.abs(delta[band])),
            "normal_variation": np.median(nv[band]),
            "normal_variation_mean": np.mean(nv[band]),
            "margin_radius_median": np.median(mq[band] / np.sqrt(3.0)),
            "float_margin_radius_median": np.median(mf[band] / np.sqrt(3.0)),
        }
        for key, value in expected.items():
            np.testing.assert_allclose(res[key][v], value, atol=2e-6, rtol=1e-5, err_msg=key)
        assert res["zero_gradient_count"][v] == 0
        # slice metrics from the analytic label maps
        lq = _np_logits(p, grid).argmax(-1).reshape(24, 24)
        lf = _np_logits(float_p, grid).argmax(-1).reshape(24, 24)
        np.testing.assert_array_equal(res["labels"][v], lq)
        np.testing.assert_allclose(res["grid_change"][v], np.mean(lq != lf), rtol=1e-6)
        np.testing.assert_allclose(
            res["boundary_jaccard_distance"][v],
            G.boundary_jaccard_distance(G.boundary_mask(lf), G.boundary_mask(lq)),
            rtol=1e-6,
        )
    # the shifted variants really moved: displacement is the shift projected on the normals
    assert res["median_local_shift"][1] > 0 and res["flip_rate"][2] > 0
    assert res["resolution"].tolist() == [24, 24, 24] and res["tolerance"].tolist() == [0, 0, 0]


def test_compare_records_are_json_ready(translated):
    *_, res = translated
    rows = G.compare_records(res)
    assert len(rows) == 3 and "labels" not in rows[0]
    assert isinstance(rows[1]["triple_junction_count"], int)
    assert isinstance(rows[1]["boundary_jaccard_distance"], float)
    assert json.loads(json.dumps(rows)) == rows


def test_compare_with_bfloat16_variants(translated):
    # variants whose logits are bfloat16 against a float32 model: no implicit promotion, and
    # the local geometry is accumulated in float32
    float_p, variants, heldout, calibration, slc, res32 = translated

    def lowp(params, x):
        x = x.reshape(x.shape[0], -1).astype(params["w"].dtype)
        return (x - params["p"][None]) @ params["w"].T

    bf16 = _stack(*(jax.tree.map(lambda l: jnp.asarray(l, jnp.bfloat16), v) for v in variants))
    res = G.compare(lowp, float_p, bf16, slc, heldout, calibration)
    for key in G.COMPARE_KEYS:
        assert np.all(np.isfinite(res[key])), key
    assert res["band_size"][0] == res32["band_size"][0] and res["zero_gradient_count"][0] == 0
    # bfloat16 keeps ~3 significant digits: the metrics stay close to the float32 variants'
    np.testing.assert_allclose(res["flip_rate"], res32["flip_rate"], atol=0.01)
    np.testing.assert_allclose(
        res["boundary_jaccard_distance"], res32["boundary_jaccard_distance"], atol=0.05
    )
    np.testing.assert_allclose(res["median_local_shift"], res32["median_local_shift"], atol=5e-3)


def test_compare_errors(translated):
    float_p, variants, heldout, calibration, slc, _ = translated
    stack = _stack(*variants)
    with pytest.raises(ValueError, match="tree structure"):
        G.compare(linear3, {"w": float_p["w"]}, stack, slc, heldout, calibration)
    with pytest.raises(ValueError, match="expected"):
        G.compare(linear3, {"w": float_p["w"], "p": jnp.zeros(3)}, stack, slc, heldout, calibration)
    with pytest.raises(TypeError, match="single Slice"):
        G.compare(linear3, float_p, stack, [slc, slc], heldout, calibration)
    # held-out points far from every boundary, calibration right on it: empty band
    far = np.array([[0.9, 0.0], [-0.45, 0.78]], np.float32)
    near = np.array([[0.5, 0.5 * np.tan(np.deg2rad(60.0))]] * 20, np.float32)
    with pytest.raises(ValueError, match="boundary band is empty"):
        G.compare(linear3, float_p, stack, slc, far, near)
    broken = _stack(variants[0], {"w": float_p["w"].at[0, 0].set(jnp.nan), "p": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"grid for variant 1; check"):
        G.compare(linear3, float_p, broken, slc, heldout, calibration)
    nan_float = {"w": float_p["w"].at[1, 1].set(jnp.nan), "p": jnp.zeros(2)}
    with pytest.raises(ValueError, match="for the float model"):
        G.compare(linear3, nan_float, stack, slc, heldout, calibration)
