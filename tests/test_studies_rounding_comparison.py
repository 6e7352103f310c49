"""The rounding comparison (bq_jax.studies.rounding_comparison) through the runner on quick
settings, and the PTQ checks on the same trained digits MLP: 8-bit PTQ-W keeps (almost) every
held-out label while its decision boundary on the PCA slice still moves (boundary Jaccard
distance clearly > 0); W8A8 changes few labels."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import geometry, ptq
from bq_jax.quant import QuantConfig
from bq_jax.studies import RoundingComparisonConfig, make_config, run
from bq_jax.studies.context import SeedContext
from bq_jax.studies.rounding_comparison import ROUNDING_METHODS

# Quick settings with shorter rounding loops (what is checked does not depend on them).
_QUICK = dict(rounding_iters=100, progress=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rounding_comparison"))
    config = make_config(RoundingComparisonConfig, quick=True, **_QUICK)
    summary = run(config, out, ["rounding_comparison"], command="python experiments/ptq_digits.py")
    ctx = SeedContext(config, 0, cache_dir=os.path.join(out, "checkpoints"))
    return config, summary.results, ctx, out


def test_rounding_comparison_rows_and_choice(study):
    config, results, _, out = study
    res = results["per_seed"][0]["rounding_comparison"]
    agg = results["rounding_comparison"]
    methods = [*ROUNDING_METHODS, "ptq_w8"]
    assert [r["method"] for r in res["rows"]] == methods == agg["methods"]
    assert [r["bits"] for r in res["rows"]] == [4, 4, 4, 4, 8]
    for r in res["rows"]:
        for k in ("accuracy", "flip_rate", "pair_order_flip", "boundary_jaccard_distance"):
            assert 0.0 <= r[k] <= 1.0, (r["method"], k)
        assert r["reconstruction_error"] >= 0.0
    rows = {r["method"]: r for r in res["rows"]}
    # AdaRound minimises the layer reconstruction error that nearest ignores
    assert rows["adaround"]["reconstruction_error"] < rows["nearest"]["reconstruction_error"]
    # the chosen pair comes from the grid; scores: AdaRound first, then one per candidate
    assert (res["boundary_gap_weight"], res["temperature"]) in config.boundary_gap_grid
    scores = res["calibration_scores"]
    assert [s["method"] for s in scores] == ["adaround"] + ["boundary_gap"] * len(
        config.boundary_gap_grid
    )
    assert agg["chosen"] == [
        {
            "seed": 0,
            "boundary_gap_weight": res["boundary_gap_weight"],
            "temperature": res["temperature"],
        }
    ]
    for r, a in zip(res["rows"], agg["rows"], strict=True):
        assert a["accuracy"] == r["accuracy"] and a["accuracy_std"] == 0.0 and a["n_seeds"] == 1
    found = [f for f in results["findings"] if f["study"] == "rounding_comparison"]
    assert len(found) == 5 and all(isinstance(f["holds"], bool) for f in found)
    assert os.path.getsize(os.path.join(out, "figures", "rounding_comparison.png")) > 1000
    with open(os.path.join(out, "report.md")) as f:
        assert "boundary_gap" in f.read()


def test_ptq_w8_keeps_labels_but_moves_the_boundary(study):
    _, results, ctx, _ = study
    res = results["per_seed"][0]["rounding_comparison"]
    rows = {r["method"]: r for r in res["rows"]}
    n = res["num_heldout_examples"]
    assert n == len(ctx.targets("heldout"))
    # at most 2 of the held-out labels change; the 64 x 64 training slice's boundary moves
    assert rows["ptq_w8"]["flip_rate"] <= 2 / n, rows["ptq_w8"]["flip_rate"]
    assert rows["ptq_w8"]["boundary_jaccard_distance"] > 0.01
    # 4 bits moves the boundary further than 8 bits
    assert (
        rows["nearest"]["boundary_jaccard_distance"] > rows["ptq_w8"]["boundary_jaccard_distance"]
    )
    # the same check computed directly
    w8 = QuantConfig(bits=8, symmetric=True, granularity="per_channel")
    v = ctx.float_params
    v8, summary = ptq.quantize_weights(v, w8, return_summary=True)
    assert [r["path"] for r in summary] == [f"params/Dense_{i}/kernel" for i in range(3)]
    assert all(r["sqnr_db"] > 35.0 for r in summary)
    run_fn = jax.jit(ctx.apply_fn)
    x = ctx.inputs("heldout")
    lf = np.asarray(jnp.argmax(run_fn(v, x), -1))
    l8 = np.asarray(jnp.argmax(run_fn(v8, x), -1))
    flip = float(np.mean(lf != l8))
    assert flip <= 2 / len(lf), flip
    assert flip == pytest.approx(rows["ptq_w8"]["flip_rate"])
    slc = geometry.pca_slice(ctx.inputs("train"), resolution=64)
    labels = geometry.sweep_labels(ctx.apply_fn, ptq.stack_params([v, v8]), slc)
    masks = geometry.boundary_mask(labels)
    bj = float(geometry.boundary_jaccard_distance(masks[0], masks[1]))
    assert bj > 0.01, bj
    assert bj == pytest.approx(rows["ptq_w8"]["boundary_jaccard_distance"])
    v4 = ptq.quantize_weights(v, QuantConfig(bits=4, symmetric=True, granularity="per_channel"))
    m4 = geometry.boundary_mask(geometry.sweep_labels(ctx.apply_fn, ptq.stack_params([v4]), slc))
    assert float(geometry.boundary_jaccard_distance(masks[0], m4[0])) > bj


def test_w8a8_on_digits(study):
    """Activation quantization on the trained MLP: 16 bits ~ float, W8A8 changes few labels."""
    _, _, ctx, _ = study
    apply_fn, v = ctx.apply_fn, ctx.float_params
    x_cal, x_heldout = ctx.inputs("calibration"), ctx.inputs("heldout")
    run_fn = jax.jit(apply_fn)
    ref_cal, ref_heldout = run_fn(v, x_cal), run_fn(v, x_heldout)
    a16 = QuantConfig(bits=16, symmetric=False)
    apply_q, pq = ptq.quantize_activations(apply_fn, v, x_cal, a16)
    got = jax.jit(apply_q)(pq, x_cal)
    scale = float(jnp.max(jnp.abs(ref_cal)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref_cal), atol=1e-3 * scale, rtol=0)
    w8 = QuantConfig(bits=8, symmetric=True, granularity="per_channel")
    a8 = QuantConfig(bits=8, symmetric=False, range_method="percentile", percentile=99.9)
    apply_q8, pq8 = ptq.quantize_activations(apply_fn, ptq.quantize_weights(v, w8), x_cal, a8)
    l8 = np.asarray(jnp.argmax(jax.jit(apply_q8)(pq8, x_heldout), -1))
    flip = float(np.mean(l8 != np.asarray(jnp.argmax(ref_heldout, -1))))
    assert flip <= 0.02, flip


def test_rounding_comparison_config():
    cfg = RoundingComparisonConfig()
    assert cfg.seeds == (0, 1, 2) and cfg.resolution == 64 and cfg.band_quantile == 0.1
    assert cfg.rounding_iters == 10_000 and cfg.bits == 4 and cfg.check_bits == 8
    assert cfg.boundary_gap_grid == ((1.0, 1.0), (3.0, 1.0), (10.0, 1.0), (10.0, 3.0))
    quick = make_config(RoundingComparisonConfig, quick=True)
    assert quick.seeds == (0,) and quick.rounding_iters == 300
    assert quick.boundary_gap_grid == ((1.0, 1.0),)
    with pytest.raises(ValueError, match="boundary_gap_grid"):
        RoundingComparisonConfig(boundary_gap_grid=())
    with pytest.raises(ValueError, match="boundary_gap_grid"):
        RoundingComparisonConfig(boundary_gap_grid=((1.0, 0.0),))
    with pytest.raises(ValueError, match="rounding_iters"):
        RoundingComparisonConfig(rounding_iters=0)
