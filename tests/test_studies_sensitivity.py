"""The sensitivity study (bq_jax.studies.sensitivity) through `bq-jax sensitivity --quick`: rows,
allocations within budget, paired differences recomputed from the per-seed numbers, vocabulary,
findings, figures and report; config and flag validation."""

import json

import numpy as np
import pytest

from bq_jax import cli, vocabulary
from bq_jax.ptq import mean_interval
from bq_jax.studies import SensitivityConfig, make_config

LAYERS = ["params/Dense_0/kernel", "params/Dense_1/kernel", "params/Dense_2/kernel"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sens") / "digits"
    argv = ["sensitivity", "digits", "--quick", "--no-progress", "--out", str(out)]
    assert cli.main([*argv, "--resolution", "16", "--num-slices", "2"]) == cli.EXIT_OK
    return out


def _base(key: str) -> str:
    key = key.removesuffix(vocabulary.STD_SUFFIX)
    for suffix in (*vocabulary.INTERVAL_SUFFIXES, vocabulary.PER_SLICE_SUFFIX):
        key = key.removesuffix(suffix)
    return key


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
    for r in seed["layer_rows"]:
        assert len(r["heldout_boundary_jaccard_distance_per_slice"]) == r["num_slices"] == 2
        assert 0.0 <= r["heldout_boundary_jaccard_distance"] <= 1.0
        assert r["flip_rate_ci_low"] <= r["flip_rate"] <= r["flip_rate_ci_high"]
        assert 0.5 < r["accuracy"] <= 1.0 and r["sqnr_db"] > 5.0
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
    # paired differences: per plane mixed - uniform, and the pooled estimates from the counts
    for d_seed, d in zip(seed["differences"], agg["differences"], strict=True):
        b = d["budget"]
        m, u = rows[(b, "mixed")], rows[(b, "uniform")]
        key = "heldout_boundary_jaccard_distance_per_slice"
        diff = np.subtract(m[key], u[key])
        np.testing.assert_allclose(
            d_seed["heldout_boundary_jaccard_distance_difference_per_slice"], diff
        )
        est = mean_interval(diff, level=0.95, bounds=(-1.0, 1.0))
        assert d["heldout_boundary_jaccard_distance_difference"] == pytest.approx(est[0])
        assert d["heldout_boundary_jaccard_distance_difference_ci_high"] == pytest.approx(est[2])
        n = d_seed["heldout_size"]
        flips = (d_seed["mixed_only_flips"] - d_seed["uniform_only_flips"]) / n
        assert d["flip_rate_difference"] == pytest.approx(flips)
        assert d["flip_rate_difference"] == pytest.approx(m["flip_rate"] - u["flip_rate"])
        assert d["accuracy_difference"] == pytest.approx(m["accuracy"] - u["accuracy"])
        assert d["num_pairs"] == 2 and d["n_seeds"] == 1
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
    with pytest.raises(ValueError, match="num_slices"):
        SensitivityConfig(num_slices=0)
    with pytest.raises(ValueError, match="confidence_level"):
        SensitivityConfig(confidence_level=1.0)
    with pytest.raises(ValueError, match="candidate_bits needs at least two"):
        SensitivityConfig(candidate_bits=(4,), budgets=(4,))


@pytest.mark.parametrize(
    "extra, needle",
    [(["--budgets", "7"], "--budgets"), (["--num-slices", "x"], "--num-slices")],
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
