"""The sensitivity study (bq_jax.studies.sensitivity) through `bq-jax sensitivity --quick`: rows,
allocations within budget, paired differences recomputed from the per-seed numbers, vocabulary,
findings, figures and report; config and flag validation."""

import json

import numpy as np
import pytest

from bq_jax import cli, stats, vocabulary
from bq_jax.studies import SensitivityConfig, make_config
from bq_jax.studies.context import stable_key
from bq_jax.studies.stopping import AGGREGATE_SEED

LAYERS = ["params/Dense_0/kernel", "params/Dense_1/kernel", "params/Dense_2/kernel"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sens") / "digits"
    argv = ["sensitivity", "digits", "--quick", "--no-progress", "--out", str(out)]
    flags = ["--resolution", "16", "--family-resolution", "16", "--slice-count", "2"]
    assert cli.main([*argv, *flags]) == cli.EXIT_OK
    return out


def _base(key: str) -> str:
    return vocabulary.metric_base(key)


def test_quick_run_rows_allocations_and_differences(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    assert results["studies"] == ["sensitivity"] and results["seeds"] == [0]
    agg, seed = results["sensitivity"], results["per_seed"][0]["sensitivity"]
    cfg = make_config(SensitivityConfig, quick=True)
    assert agg["layers"] == LAYERS and agg["num_weights"] == dict(
        zip(LAYERS, (4096, 4096, 640), strict=True)
    )
    # per-layer rows: for each width, only / all_but per layer and the all-layers row
    assert [(r["bits"], r["scope"], r["layer"]) for r in seed["layer_rows"]] == [
        (b, s, p) for b in cfg.layer_bits for s in ("only", "all_but") for p in LAYERS
    ] + [(b, "all", None) for b in cfg.layer_bits]
    jac = "heldout_boundary_jaccard_distance"
    for r in seed["layer_rows"]:
        assert len(r[jac + "_values"]) == r[jac + "_n"] == 2
        assert r[jac] == pytest.approx(np.mean(r[jac + "_values"]), abs=1e-7)
        assert 0.0 <= r[jac] <= 1.0
        assert r["flip_rate_low"] <= r["flip_rate"] <= r["flip_rate_high"]
        assert r["flip_rate_n"] == seed["num_heldout_examples"]
        assert 0.5 < r["accuracy"] <= 1.0 and r["sqnr_db"] > 5.0
    # aggregated rows: one seed, so the pooled estimates are that seed's (same formulas)
    for r, r_seed in zip(agg["layer_rows"], seed["layer_rows"], strict=True):
        assert r[jac] == pytest.approx(r_seed[jac]) and r[jac + "_n"] == 2
        assert r["flip_rate_n"] == r_seed["flip_rate_n"]
        assert r["flip_rate_high"] == pytest.approx(r_seed["flip_rate_high"], abs=1e-7)
    # allocations: within budget; uniform rows sit exactly at the budget
    for a in seed["allocations"]:
        bits = a["bits_per_layer"]
        avg = sum(agg["num_weights"][p] * bits[p] for p in LAYERS) / 8832
        assert a["average_bits"] == pytest.approx(avg) and avg <= a["budget"]
        assert set(bits.values()) <= set(cfg.candidate_bits)
    rows = {(r["budget"], r["allocation"]): r for r in seed["rows"]}
    assert list(rows) == [(b, a) for b in cfg.budgets for a in ("mixed", "uniform", "exhaustive")]
    for (budget, name), r in rows.items():
        assert r["average_bits"] <= budget
        if name == "exhaustive":  # the calibration optimum: no allocation within budget is lower
            cal = "calibration_boundary_jaccard_distance"
            assert r[cal] <= min(rows[(budget, n)][cal] for n in ("mixed", "uniform"))
        elif name == "uniform":
            assert r["average_bits"] == budget and set(r["bits_per_layer"].values()) == {budget}
        else:
            alloc = next(a for a in seed["allocations"] if a["budget"] == budget)
            assert r["bits_per_layer"] == alloc["bits_per_layer"]
            assert r["calibration_boundary_jaccard_distance"] == pytest.approx(
                alloc["calibration_boundary_jaccard_distance"]
            )
    # paired differences: per plane mixed - uniform, and the pooled estimates recomputed with
    # bq_jax.stats from the per-seed numbers and the documented keys
    diff_key = "heldout_boundary_jaccard_distance_difference"
    for d_seed, d in zip(seed["differences"], agg["differences"], strict=True):
        b = d["budget"]
        m, u = rows[(b, "mixed")], rows[(b, "uniform")]
        diff = np.subtract(m[jac + "_values"], u[jac + "_values"])
        np.testing.assert_allclose(d_seed[diff_key + "_values"], diff, atol=1e-7)
        resamples = cfg.bootstrap_resamples
        est = stats.mean_estimate(
            stable_key(AGGREGATE_SEED, "sensitivity", diff_key, b),
            np.asarray([d_seed[diff_key + "_values"]], np.float32),
            n_resamples=resamples,
        ).to_dict(diff_key)
        assert {k: d[k] for k in est} == est
        n = d_seed["heldout_size"]
        pos, neg = d_seed["mixed_only_flips"], d_seed["uniform_only_flips"]
        paired = np.zeros((1, n), np.float32)
        paired[0, :pos], paired[0, pos : pos + neg] = 1.0, -1.0
        flip = stats.mean_estimate(
            stable_key(AGGREGATE_SEED, "sensitivity", "flip_rate_difference", b),
            paired,
            n_resamples=resamples,
        ).to_dict("flip_rate_difference")
        assert {k: d[k] for k in flip} == flip
        assert d["flip_rate_difference"] == pytest.approx((pos - neg) / n, abs=1e-7)
        assert d["flip_rate_difference"] == pytest.approx(m["flip_rate"] - u["flip_rate"], abs=1e-7)
        assert d["accuracy_difference"] == pytest.approx(m["accuracy"] - u["accuracy"], abs=1e-7)
        assert d[diff_key + "_n"] == 2 and d["flip_rate_difference_n"] == n
        assert d["n_seeds"] == 1
    # every key of a row is a word of the vocabulary
    for block in ("layer_rows", "rows"):
        for r in agg[block]:
            for k in r:
                base = _base(k)
                assert (
                    base in vocabulary.METRICS
                    or base in vocabulary.HYPERPARAMETERS
                    or (base == "n_seeds")
                ), (block, k)
    for d in agg["differences"]:
        assert all(_base(k) in vocabulary.METRICS or k == "n_seeds" for k in d), d


def test_quick_run_findings_figures_and_report(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    found = [f for f in results["findings"] if f["study"] == "sensitivity"]
    # per layer width: 2 findings; per budget: calibration, exhaustive, held-out Jaccard and
    # held-out flip rate
    assert len(found) == 2 * 1 + 4 * 1
    assert all(f["holds"] in (True, False) and f["evidence"] for f in found)
    assert any("HELD-OUT boundary Jaccard" in f["finding"] for f in found)
    for name in ("layer_sensitivity_3bit.png", "mixed_vs_uniform.png"):
        data = (quick_run / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    report = (quick_run / "report.md").read_text()
    for text in (
        "Per-layer boundary sensitivity",
        "all_but",
        "Mixed vs uniform",
        "Dense_2",
        "bq-jax sensitivity digits --quick",
    ):
        assert text in report, text


def test_config_validation():
    default = SensitivityConfig()
    assert default.seeds == (0, 1, 2) and default.budgets == (3, 4)
    with pytest.raises(ValueError, match="budgets must each be one of the allocation's widths"):
        SensitivityConfig(budgets=(7,))
    with pytest.raises(ValueError, match="budgets must each be one of"):
        SensitivityConfig(budgets=(8,))  # the widest: nothing to allocate
    with pytest.raises(ValueError, match="layer_bits must be distinct"):
        SensitivityConfig(layer_bits=(4, 4))
    with pytest.raises(ValueError, match="slice_count"):
        SensitivityConfig(slice_count=0)
    with pytest.raises(ValueError, match="slice_family"):
        SensitivityConfig(slice_family="grid")
    with pytest.raises(ValueError, match="resolution must equal family_resolution"):
        SensitivityConfig(family_resolution=32)
    # the family fields are StudyConfig's: one definition (FamilyConfig)
    from bq_jax.studies import FamilyConfig, StudyConfig

    assert issubclass(SensitivityConfig, FamilyConfig) and issubclass(StudyConfig, FamilyConfig)
    with pytest.raises(ValueError, match="confidence_level"):
        SensitivityConfig(confidence_level=1.0)
    with pytest.raises(ValueError, match="candidate_bits needs at least two"):
        SensitivityConfig(candidate_bits=(4,), budgets=(4,))


@pytest.mark.parametrize(
    "extra, needle",
    [(["--budgets", "7"], "--budgets"), (["--slice-count", "x"], "--slice-count")],
)
def test_bad_flags_one_line(extra, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = cli.main(["sensitivity", "digits", *extra])
    except SystemExit as e:  # argparse's own errors (unparsable value)
        code = e.code
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
