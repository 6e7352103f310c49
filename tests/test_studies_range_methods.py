"""The range-method comparison (bq_jax.studies.range_methods) through the runner on quick
settings: rows, QAT-run statistics, SQNR ordering, figures and report, config validation."""

import numpy as np
import pytest

from bq_jax import quant
from bq_jax.studies import RangeMethodsConfig, make_config, run, run_study
from bq_jax.studies.range_methods import DEFAULT_RANGE_METHODS


def test_range_method_study_quick(tmp_path):
    cfg = make_config(RangeMethodsConfig, quick=True, qat_seeds=2, progress=False)
    results = run(cfg, str(tmp_path), ["range_methods"]).results
    res = results["per_seed"][0]["range_methods"]
    agg = results["range_methods"]
    assert [(r["bits"], r["range_method"]) for r in res["rows"]] == [
        (2, m) for m in DEFAULT_RANGE_METHODS
    ]
    layers = res["layers"]
    assert len(layers) == 3 and agg["layers"] == layers
    for r in res["rows"]:
        accs = r["accuracies"]
        assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)
        assert r["accuracy"] == pytest.approx(np.mean(accs))
        assert r["accuracy_spread"] == pytest.approx(np.std(accs))
        assert r["accuracy_min"] == pytest.approx(np.min(accs))
        curves = np.asarray(res["curves"][f"2/{r['range_method']}"]["epoch_loss"])
        assert curves.shape == (2, cfg.qat_epochs)
        assert r["loss_curve_spread"] == pytest.approx(float(np.mean(np.std(curves, axis=0))))
        assert r["final_loss"] == pytest.approx(float(curves[:, -1].mean()))
        assert set(r["ptq_sqnr_db_per_layer"]) == set(layers) == set(r["qat_sqnr_db_per_layer"])
        assert all(0.0 < v < 30.0 for v in r["ptq_sqnr_db_per_layer"].values())
        assert r["ptq_sqnr_db"] == pytest.approx(np.mean(list(r["ptq_sqnr_db_per_layer"].values())))
        # QAT at 2 bits beats round-to-nearest PTQ with the same range method or matches it
        assert r["accuracy"] >= r["ptq_accuracy"] - 0.01
    by = {r["range_method"]: r for r in res["rows"]}
    # MSE minimises the weight quantization error; min-max clips nothing (lowest SQNR at 2 bits)
    assert by["mse"]["ptq_sqnr_db"] > by["minmax"]["ptq_sqnr_db"]
    assert by["octav"]["ptq_sqnr_db"] > by["minmax"]["ptq_sqnr_db"]
    # one training seed: the aggregate is that seed's numbers with zero spread over seeds
    for r, a in zip(res["rows"], agg["rows"], strict=True):
        assert a["accuracy"] == r["accuracy"] and a["accuracy_std"] == 0.0 and a["n_seeds"] == 1
        assert a["ptq_sqnr_db_per_layer"] == r["ptq_sqnr_db_per_layer"]
    c = agg["curves"]["2/mse"]
    mat = np.asarray(res["curves"]["2/mse"]["epoch_loss"])
    np.testing.assert_allclose(c["epoch_loss_mean"], mat.mean(axis=0))
    np.testing.assert_allclose(c["epoch_loss_spread"], mat.std(axis=0))
    found = [f for f in results["findings"] if f["study"] == "range_methods"]
    assert found and all(f["holds"] in (True, False) for f in found)
    for name in ("loss_curves_2bit", "loss_curve_spread_2bit"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000
    assert "octav" in (tmp_path / "report.md").read_text()


def test_range_methods_config_validation():
    # the valid names are bq_jax.quant's; the default compares a subset of them
    assert set(DEFAULT_RANGE_METHODS) <= set(quant.RANGE_METHODS)
    assert RangeMethodsConfig(range_methods=("percentile",)).range_methods == ("percentile",)
    with pytest.raises(ValueError, match="range_methods"):
        RangeMethodsConfig(range_methods=("magic",))
    with pytest.raises(ValueError, match="range_methods"):
        RangeMethodsConfig(range_methods=())
    with pytest.raises(ValueError, match="qat_seeds"):
        RangeMethodsConfig(qat_seeds=0)
    with pytest.raises(ValueError, match="bits"):
        RangeMethodsConfig(bits=(1,))
    default = RangeMethodsConfig()
    assert default.seeds == (0,) and default.qat_seeds == 3 and default.bits == (2, 3, 4)
    quick = make_config(RangeMethodsConfig, quick=True)
    assert quick.bits == (2,) and quick.qat_epochs == 2 and quick.qat_seeds == 2


def test_run_study_in_memory(tmp_path):
    cfg = make_config(
        RangeMethodsConfig, quick=True, qat_seeds=1, range_methods=("minmax",), progress=False
    )
    agg = run_study(cfg, "range_methods", cache_dir=str(tmp_path))
    (row,) = agg["rows"]
    assert row["range_method"] == "minmax" and row["accuracy_spread"] == 0.0
    assert row["loss_curve_spread"] == 0.0
