"""ptq.sensitivity: per-layer sensitivity against a direct computation (layers quantized by hand,
geometry.compare plane by plane), the estimates against bq_jax.stats and their formulas, the
greedy allocation against brute force and on a constructed model whose right answer is known."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from bq_jax import geometry, ptq, quant, stats

CFG3 = quant.QuantConfig(bits=3, symmetric=True, granularity="per_channel")
SIZES = (4, 8, 8, 3)  # a 4 -> 8 -> 8 -> 3 MLP: three kernels of 32, 64 and 24 weights


def mlp(params, x):
    p = params["params"]
    h = jnp.maximum(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None], 0.0)
    h = jnp.maximum(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"][None], 0.0)
    return h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"][None]


def _params(seed=0):
    rng = np.random.default_rng(seed)
    p = {}
    for i, (a, b) in enumerate(itertools.pairwise(SIZES)):
        p[f"Dense_{i}"] = {
            "kernel": jnp.asarray(rng.normal(size=(a, b)) / math.sqrt(a), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=b) * 0.1, jnp.float32),
        }
    return {"params": p}


@pytest.fixture(scope="module")
def setup():
    params = _params()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    y = np.asarray(jnp.argmax(mlp(params, x[:250]), -1)).astype(np.int32)
    y[::7] = (y[::7] + 1) % 3  # some float errors, so accuracy is not 1
    # a slice family of the held-out inputs, as the sensitivity study uses
    planes = geometry.slice_family(
        jax.random.key(0), x[:250], kind="triplet", count=3, resolution=16
    )
    return params, x[:250], y, x[250:], planes


K = 3  # planes of the fixture's family
KEY = jax.random.key(7)


LAYERS = ["params/Dense_0/kernel", "params/Dense_1/kernel", "params/Dense_2/kernel"]


def _hand(params, quantized):
    """params with the kernels in ``quantized`` replaced by their numpy-checked 3-bit grids."""
    out = jax.tree.map(lambda v: v, params)
    for path in quantized:
        name = path.split("/")[1]
        w = params["params"][name]["kernel"]
        wq = quant.fake_quant(w, CFG3)
        # the quantizer is per-channel symmetric min-max round-half-even: check it against numpy
        w64 = np.asarray(w, np.float64)
        s = np.abs(w64).max(axis=0, keepdims=True) / 3
        np.testing.assert_allclose(
            np.asarray(wq), np.clip(np.round(w64 / s), -4, 3) * s, rtol=0, atol=1e-6
        )
        out["params"][name] = {**out["params"][name], "kernel": wq}
    return out


def test_layer_sensitivity_matches_hand_quantized_layers_and_one_compare(setup):
    params, xh, yh, xc, planes = setup
    rows = ptq.layer_sensitivity(
        mlp,
        params,
        configs=CFG3,
        slices=planes,
        heldout_x=xh,
        heldout_y=yh,
        calibration_x=xc,
        key=KEY,
    )
    assert [(r["layer"], r["scope"]) for r in rows] == [
        *((p, "only") for p in LAYERS),
        *((p, "all_but") for p in LAYERS),
        (None, "all"),
    ]
    quantized = [[p] for p in LAYERS] + [[q for q in LAYERS if q != p] for p in LAYERS] + [LAYERS]
    variants = [_hand(params, q) for q in quantized]
    stack = ptq.stack_params(variants)
    direct = [geometry.compare(mlp, params, stack, planes[k], xh, xc) for k in range(K)]
    for i, (row, q, v) in enumerate(zip(rows, quantized, variants, strict=True)):
        assert row["bits"] == 3 and row["boundary_jaccard_distance_n"] == K
        assert row["num_weights"] == (
            sum((32, 64, 24))
            if row["layer"] is None
            else {LAYERS[0]: 32, LAYERS[1]: 64, LAYERS[2]: 24}[row["layer"]]
        )
        # the same numbers as compare() on the hand-quantized variant, plane by plane
        # (family_metrics and compare are separate code paths over the same label maps)
        per_plane = [float(d["boundary_jaccard_distance"][i]) for d in direct]
        assert row["boundary_jaccard_distance_values"] == pytest.approx(per_plane, abs=1e-7)
        assert row["boundary_jaccard_distance"] == pytest.approx(np.mean(per_plane), abs=1e-7)
        assert row["grid_change_values"] == pytest.approx(
            [float(d["grid_change"][i]) for d in direct], abs=1e-7
        )
        assert row["triple_junction_count_values"] == [
            float(d["triple_junction_count"][i]) for d in direct
        ]
        for key in ("flip_rate", "band_flip_rate", "pair_order_flip"):
            assert row[key] == pytest.approx(float(direct[0][key][i]), abs=1e-6), key
        assert row["median_local_shift"] == pytest.approx(float(direct[0]["median_local_shift"][i]))
        assert row["band_size"] == int(direct[0]["band_size"][i])
        # accuracy and flips from the logits, in numpy
        pred = np.argmax(np.asarray(mlp(v, xh)), -1)
        assert row["accuracy"] == np.mean(pred == yh)
        float_pred = np.argmax(np.asarray(mlp(params, xh)), -1)
        assert row["flip_rate"] == np.mean(pred != float_pred)
        # pooled weight SQNR of the quantized kernels
        w = np.concatenate([np.ravel(params["params"][p.split("/")[1]]["kernel"]) for p in q])
        wq = np.concatenate([np.ravel(v["params"][p.split("/")[1]]["kernel"]) for p in q])
        w, wq = w.astype(np.float64), wq.astype(np.float64)
        ref = 10 * np.log10(np.sum(w**2) / np.sum((w - wq) ** 2))
        assert row["sqnr_db"] == pytest.approx(ref, rel=1e-6)
    # the all-but row of the last layer is the variant with the first two kernels quantized
    assert rows[5]["sqnr_db"] != rows[6]["sqnr_db"]
    # a single layer's SQNR is quant.sqnr_db
    w0 = params["params"]["Dense_0"]["kernel"]
    assert rows[0]["sqnr_db"] == pytest.approx(
        float(quant.sqnr_db(w0, quant.fake_quant(w0, CFG3))), rel=1e-5
    )


def test_estimates_are_the_stats_estimators_and_follow_their_formulas(setup):
    params, xh, yh, xc, planes = setup
    # the 7 variants of the test above (same shapes: the compiled code is reused)
    quantized = [[p] for p in LAYERS] + [[q for q in LAYERS if q != p] for p in LAYERS] + [LAYERS]
    rows = ptq.measure_variants(
        mlp,
        params,
        [_hand(params, q) for q in quantized],
        slices=planes,
        heldout_x=xh,
        heldout_y=yh,
        calibration_x=xc,
        key=KEY,
        n_resamples=300,
        level=0.9,
    )
    v = len(rows) - 1
    row = rows[v]
    # a slice metric: bq_jax.stats.mean_estimate over the planes with the documented key
    for m, name in enumerate(ptq.SLICE_METRICS):
        vals = np.asarray(row[name + "_values"], np.float32)
        est = stats.mean_estimate(
            jax.random.fold_in(jax.random.fold_in(KEY, v), m), vals, n_resamples=300, level=0.9
        ).to_dict(name)
        assert {k: row[k] for k in est} == est, name
        # and the formulas: mean, se = s / sqrt(K) (ddof 1), n = K
        assert row[name] == pytest.approx(float(vals.mean()), rel=1e-6)
        assert row[name + "_se"] == pytest.approx(float(vals.std(ddof=1)) / math.sqrt(K), rel=1e-5)
        assert row[name + "_n"] == K
        assert row[name + "_low"] <= row[name] <= row[name + "_high"]
    # a rate: the Wilson interval over the held-out examples (formula, scipy's binomtest)
    n, k = 250, round(row["flip_rate"] * 250)
    assert row["flip_rate"] == k / n and row["flip_rate_n"] == n and k > 0
    z = sps.norm.ppf(0.95)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    hw = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert row["flip_rate_low"] == pytest.approx(max(centre - hw, 0.0), abs=2e-6)
    assert row["flip_rate_high"] == pytest.approx(centre + hw, abs=2e-6)
    assert row["flip_rate_se"] == pytest.approx(math.sqrt(p * (1 - p) / n), abs=1e-7)
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.9, method="wilson")
    assert (row["flip_rate_low"], row["flip_rate_high"]) == pytest.approx(
        (ci.low, ci.high), abs=2e-6
    )
    # accuracy and the band rates are Wilson estimates over their own examples
    assert row["accuracy_n"] == n and row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]
    assert row["band_flip_rate_n"] == row["pair_order_flip_n"] == row["band_size"] > 0
    kb = round(row["band_flip_rate"] * row["band_size"])
    assert row["band_flip_rate_high"] == pytest.approx(
        float(stats.wilson_interval(kb, row["band_size"], level=0.9).high)
    )
    # one vocabulary: no key of the row uses a suffix outside bq_jax.vocabulary's
    assert not any(key.endswith(("_ci_low", "_ci_high", "_per_slice")) for key in row)
    assert not hasattr(ptq, "mean_interval") and not hasattr(ptq, "wilson_interval")


def test_layer_names_and_errors(setup):
    params, xh, yh, xc, planes = setup
    assert ptq.weight_layers(params) == dict(zip(LAYERS, (32, 64, 24), strict=True))
    assert ptq.resolve_layers(params, ["Dense_2", "params/Dense_0/kernel"]) == [
        LAYERS[2],
        LAYERS[0],
    ]
    with pytest.raises(ValueError, match=r"unknown layer 'Dense_9'.*params/Dense_0/kernel"):
        ptq.resolve_layers(params, ["Dense_9"])
    with pytest.raises(ValueError, match="given twice"):
        ptq.resolve_layers(params, ["Dense_0", "params/Dense_0/kernel"])
    with pytest.raises(TypeError, match="sequence of layer names"):
        ptq.resolve_layers(params, "Dense_0")
    with pytest.raises(ValueError, match="unknown layer 'Dense_9'"):
        ptq.layer_sensitivity(
            mlp,
            params,
            configs=CFG3,
            slices=planes,
            heldout_x=xh,
            heldout_y=yh,
            calibration_x=xc,
            key=KEY,
            layers=["Dense_9"],
        )
    with pytest.raises(ValueError, match="scope must be one of"):
        ptq.layer_sensitivity(
            mlp,
            params,
            configs=CFG3,
            slices=planes,
            heldout_x=xh,
            heldout_y=yh,
            calibration_x=xc,
            key=KEY,
            scopes=("some",),
        )
    with pytest.raises(ValueError, match="heldout_y must be labels"):
        ptq.measure_variants(
            mlp,
            params,
            [params],
            slices=planes,
            heldout_x=xh,
            heldout_y=yh[:-1],
            calibration_x=xc,
            key=KEY,
        )
    with pytest.raises(ValueError, match="unknown layer"):
        ptq.quantize_layers(params, {"params/Dense_0/bias": CFG3})
    # only the named layer changes; the rest stays bit-identical
    q = ptq.quantize_layers(params, {LAYERS[1]: CFG3, LAYERS[2]: None})
    flat, flat_q = ptq.flatten_params(params), ptq.flatten_params(q)
    for path in flat:
        same = np.array_equal(np.asarray(flat[path]), np.asarray(flat_q[path]))
        assert same == (path != LAYERS[1]), path


def test_average_bits_is_weighted_by_weight_count():
    assert ptq.average_bits({"a": 8, "b": 2, "c": 4}, {"a": 4096, "b": 4096, "c": 640}) == (
        (8 * 4096 + 2 * 4096 + 4 * 640) / 8832
    )
    with pytest.raises(ValueError, match="same non-empty set"):
        ptq.average_bits({"a": 8}, {"b": 1})


WIDTHS = (2, 3, 4, 5, 6, 8)
DIGITS_SIZES = (4096, 4096, 640)  # the digits MLP's kernels


def _brute_force(score, sizes, widths, budget):
    feasible = [
        a
        for a in itertools.product(widths, repeat=len(sizes))
        if sum(n * b for n, b in zip(sizes, a, strict=True)) <= budget * sum(sizes)
    ]
    return min(feasible, key=lambda a: score([a])[0])


def test_greedy_matches_brute_force_on_the_noise_model_and_refine_matters():
    """Score: the uniform-noise model sum_l s_l n_l 4^-b_l (quantization noise power of b-bit
    weights, scaled by a per-layer sensitivity s_l) on the digits MLP's layer sizes; for 20
    random sensitivities x 2 budgets the greedy allocation (with refine) is the brute-force
    optimum. The narrowing phase alone misses it in some of them."""
    hits, hits_narrow_only = 0, 0
    for seed in range(20):
        sens = np.random.default_rng(seed).lognormal(size=3)

        def score(assignments, sens=sens):
            return [
                float(sum(s * n * 4.0**-b for s, n, b in zip(sens, DIGITS_SIZES, a, strict=True)))
                for a in assignments
            ]

        for budget in (3, 4):
            best = _brute_force(score, DIGITS_SIZES, WIDTHS, budget)
            assert ptq.exhaustive_allocation(score, DIGITS_SIZES, WIDTHS, budget) == (
                best,
                score([best])[0],
            )
            got, steps = ptq.greedy_allocation(score, DIGITS_SIZES, WIDTHS, budget)
            narrow_only, _ = ptq.greedy_allocation(
                score, DIGITS_SIZES, WIDTHS, budget, refine=False
            )
            hits += got == best
            hits_narrow_only += narrow_only == best
            avg = sum(n * b for n, b in zip(DIGITS_SIZES, got, strict=True)) / sum(DIGITS_SIZES)
            assert avg <= budget and steps[-1]["average_bits"] == pytest.approx(avg)
    assert hits == 40
    assert hits_narrow_only < 40
    with pytest.raises(ValueError, match="max_assignments"):
        ptq.exhaustive_allocation(score, DIGITS_SIZES, WIDTHS, 4, max_assignments=100)


def test_greedy_is_deterministic_and_breaks_ties_in_layer_order():
    calls = []

    def flat_score(assignments):  # every assignment scores the same: only the ties decide
        calls.append(list(assignments))
        return [0.0] * len(assignments)

    a1, s1 = ptq.greedy_allocation(flat_score, [10, 10, 10], (2, 4, 8), 4.0)
    a2, s2 = ptq.greedy_allocation(flat_score, [10, 10, 10], (2, 4, 8), 4.0)
    assert a1 == a2 and s1 == s2
    # equal cost and saving: the earlier layer narrows first
    assert [(s["layer"], s["to_bits"]) for s in s1] == [(0, 4), (1, 4), (2, 4)]
    assert a1 == (4, 4, 4)
    with pytest.raises(ValueError, match="budget"):
        ptq.greedy_allocation(flat_score, [10], (2, 4), 1.0)
    with pytest.raises(ValueError, match="distinct"):
        ptq.greedy_allocation(flat_score, [10], (2, 2, 4), 3.0)


def _lossless_layer_params():
    """The test MLP with Dense_1's kernel exactly on its 2-, 3- and 8-bit grids: entries in
    {-a, 0, a}, both signs in every output channel, a = 2667 = 3 * 7 * 127 so that the scale
    a / qmax (qmax = 1, 3, 127) is an exact integer; Dense_2's kernel is divided by a (ReLU is
    positively homogeneous: the float function is unchanged up to rounding)."""
    params = _params()
    rng = np.random.default_rng(5)
    a = 2667.0
    k = rng.choice([-1.0, 0.0, 1.0], size=(8, 8))
    k[0], k[1] = 1.0, -1.0  # every output channel reaches a and -a
    p = params["params"]
    p["Dense_1"] = {**p["Dense_1"], "kernel": jnp.asarray(k * a, jnp.float32)}
    p["Dense_2"] = {**p["Dense_2"], "kernel": p["Dense_2"]["kernel"] / a}
    return params


def test_allocation_narrows_the_lossless_layer_first_and_meets_the_budget(setup):
    _, xh, _, xc, _ = setup
    params = _lossless_layer_params()
    configs = {
        b: quant.QuantConfig(bits=b, symmetric=True, granularity="per_channel") for b in (2, 3, 8)
    }
    k = params["params"]["Dense_1"]["kernel"]
    for cfg in configs.values():  # Dense_1 is exactly on every grid
        np.testing.assert_array_equal(np.asarray(quant.fake_quant(k, cfg)), np.asarray(k))
    planes = [
        geometry.pca_slice(xc, resolution=16),
        geometry.random_slice(jax.random.key(3), xc, resolution=16),
    ]
    score = ptq.calibration_jaccard_score(mlp, params, configs, planes, LAYERS)
    budget = 3.0
    alloc = ptq.allocate_bits(
        mlp, params, configs=configs, calibration_slices=planes, budget=budget, score_fn=score
    )
    again = ptq.allocate_bits(
        mlp, params, configs=configs, calibration_slices=planes, budget=budget
    )
    assert alloc == again  # deterministic (and the memoised score gives the same answer)
    assert alloc.average_bits <= budget
    assert alloc.average_bits == ptq.average_bits(alloc.bits, alloc.num_weights)
    assert alloc.num_weights == dict(zip(LAYERS, (32, 64, 24), strict=True))
    # the lossless layer costs nothing to narrow: it goes 8 -> 3 -> 2 before anything else
    first = [(s["layer"], s["to_bits"]) for s in alloc.steps[:2]]
    assert first == [(LAYERS[1], 3), (LAYERS[1], 2)]
    assert alloc.bits[LAYERS[1]] == 2
    start = score([(8, 8, 8)])[0]
    assert [s["score"] for s in alloc.steps[:2]] == [start] * 2
    # not a tie: narrowing either other layer first moves the calibration boundary
    assert min(score([(3, 8, 8), (8, 8, 3)])) > start
    # the score is the mean over the planes of compare()'s boundary Jaccard distance
    variant = ptq.quantize_layers(
        params, {LAYERS[0]: configs[3], LAYERS[1]: configs[8], LAYERS[2]: configs[8]}
    )
    direct = [
        float(
            geometry.compare(mlp, params, ptq.stack_params([variant]), slc, xh, xc)[
                "boundary_jaccard_distance"
            ][0]
        )
        for slc in planes
    ]
    assert score([(3, 8, 8)])[0] == pytest.approx(np.mean(direct), abs=1e-7)
    assert alloc.calibration_score == score([tuple(alloc.bits[p] for p in LAYERS)])[0]
    with pytest.raises(ValueError, match="QuantConfig of that width"):
        ptq.allocate_bits(
            mlp, params, configs={3: configs[8]}, calibration_slices=planes, budget=3.0
        )
    with pytest.raises(ValueError, match="budget"):
        ptq.allocate_bits(
            mlp, params, configs=configs, calibration_slices=planes, budget=1.5, score_fn=score
        )


def test_layouts_make_equinox_layers_quantize_per_output_channel():
    """An equinox kernel is (out, in): with the adapter's layouts, the per-layer quantizer of the
    sensitivity study scales per OUTPUT channel, exactly as quantize_weights(layouts=) does."""
    eqx = pytest.importorskip("equinox")
    from bq_jax.models import adapt

    mlp = eqx.nn.MLP(4, 3, 8, 1, key=jax.random.key(0))
    adapted = adapt(mlp, sample_x=jnp.ones((2, 4), jnp.float32))
    layers = ptq.weight_layers(adapted.params, layouts=adapted.layouts)
    assert list(layers) == list(adapted.layouts)
    first = list(layers)[0]
    cfg = quant.QuantConfig(bits=3, granularity="per_channel")
    mine = ptq.flatten_params(
        ptq.quantize_layers(adapted.params, {first: cfg}, layouts=adapted.layouts)
    )
    ref = ptq.flatten_params(
        ptq.quantize_weights(adapted.params, [("^" + first + "$", cfg)], layouts=adapted.layouts)
    )
    np.testing.assert_array_equal(np.asarray(mine[first]), np.asarray(ref[first]))
    # per output channel: each row of the (out, in) kernel has its own min-max scale, so each
    # row's largest |w| is kept (up to the float rounding of qmax * scale) -- not each column's
    w, q = np.asarray(ptq.flatten_params(adapted.params)[first]), np.asarray(mine[first])
    np.testing.assert_allclose(np.max(np.abs(q), axis=1), np.max(np.abs(w), axis=1), rtol=1e-6)
    assert not np.allclose(np.max(np.abs(q), axis=0), np.max(np.abs(w), axis=0), rtol=1e-6)
