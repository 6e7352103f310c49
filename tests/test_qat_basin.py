"""The QAT basin study and the range-method comparison on quick settings: schemas, deployed
kernels on their grids, line losses against independently computed losses, outputs, CLI."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bq_jax import cli
from bq_jax.qat import (
    BASIN_METHODS,
    RANGE_METHOD_CHOICES,
    basin_config,
    range_method_study_config,
    run_basin_study,
    run_range_method_study,
)
from bq_jax.qat.basin import QAT_METHODS

# Quick settings, shrunk further where it does not change what is checked.
_BASIN = dict(adaround_iterations=20, hessian_iters=12, resolution=16, line_points=7)


@pytest.fixture(scope="module")
def basin(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("basin"))
    res, sol = run_basin_study(
        basin_config(quick=True, **_BASIN), out_dir=out, progress=False, return_solutions=True
    )
    return res, sol, out


def _train_loss(sol, variables) -> float:
    f = sol["float"]
    logits = f["apply_fn"](variables, jnp.asarray(f["x_train"]))
    return float(
        optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(f["y_train"])).mean()
    )


def test_basin_schema(basin):
    res, _, _ = basin
    assert res["schema_version"] == 1 and res["study"] == "qat_basin" and res["quick"] is True
    assert res["config"]["bits"] == [2] or res["config"]["bits"] == (2,)
    assert [(r["bits"], r["method"]) for r in res["rows"]] == [(2, m) for m in BASIN_METHODS]
    ts = res["line_t"]
    assert ts[0] == 0.0 and 1.0 in ts and ts[-1] == pytest.approx(1.5)
    assert all(a < b for a, b in zip(ts, ts[1:], strict=False))
    k = res["hessian"]["k"]
    eigs = res["hessian"]["eigenvalues"]
    assert len(eigs) == k == 3 and all(a >= b for a, b in zip(eigs, eigs[1:], strict=False))
    assert eigs[0] > 0
    assert res["hessian"]["sharp_fraction_random"] == pytest.approx(
        math.sqrt(k / res["num_params"])
    )
    for r in res["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert 0.0 <= r["flip_rate"] <= 1.0 and 0.0 <= r["boundary_jaccard"] <= 1.0
        assert 0.0 <= r["sharp_fraction"] <= 1.0 + 1e-9
        assert r["displacement_norm"] > 0 and r["line_barrier"] >= 0.0
        assert r["line_loss_max"] >= r["train_loss"] - 1e-6
        assert r["excess_loss"] == pytest.approx(r["train_loss"] - res["float"]["train_loss"])
        assert len(res["lines"][f"2/{r['method']}"]) == len(ts)
    assert set(res["trajectories"]) == {f"2/{m}" for m in QAT_METHODS}
    for name, tr in res["trajectories"].items():
        n = len(tr["step"])
        assert n >= 2 and tr["step"][0] == 0
        assert all(len(v) == n for v in tr.values()), name
        assert tr["cosine_step"][-1] is None
        assert all(c is None or -1.0 - 1e-9 <= c <= 1.0 + 1e-9 for c in tr["cosine_quantized"])
    assert len(res["trajectory_summary"]) == len(QAT_METHODS)
    assert res["findings"] and all(isinstance(f["holds"], bool) for f in res["findings"])


def test_basin_deployed_kernels_on_their_grids(basin):
    res, sol, _ = basin
    qmin, qmax = -2, 1  # signed symmetric 2-bit codes
    for method in BASIN_METHODS:
        s = sol[(2, method)]
        params = s["variables"]["params"]
        assert set(s["scales"]) == {f"params/{layer}/kernel" for layer in params}
        for layer, leaf in params.items():
            w = np.asarray(leaf["kernel"], np.float64)
            scale = np.asarray(s["scales"][f"params/{layer}/kernel"], np.float64).reshape(1, -1)
            assert np.all(scale > 0)
            codes = w / scale
            assert np.max(np.abs(codes - np.round(codes))) < 1e-3, (method, layer)
            assert codes.min() >= qmin - 1e-3 and codes.max() <= qmax + 1e-3, (method, layer)
            # per output channel at most 2^bits distinct values
            assert max(len(np.unique(np.round(codes[:, j]))) for j in range(w.shape[1])) <= 4
            # biases stay float (identical to the float solution for the PTQ methods)
            if method.startswith("ptq"):
                np.testing.assert_array_equal(
                    leaf["bias"], sol["float"]["variables"]["params"][layer]["bias"]
                )


def test_basin_line_losses_match_independent_losses(basin):
    res, sol, _ = basin
    ts = res["line_t"]
    i1 = ts.index(1.0)
    l_float = _train_loss(sol, sol["float"]["variables"])
    assert res["float"]["train_loss"] == pytest.approx(l_float, rel=1e-5)
    wf = sol["float"]["variables"]["params"]
    for r in res["rows"]:
        line = res["lines"][f"2/{r['method']}"]
        vq = sol[(2, r["method"])]["variables"]
        assert line[0] == pytest.approx(l_float, rel=1e-5)
        l_q = _train_loss(sol, vq)
        assert r["train_loss"] == pytest.approx(l_q, rel=1e-4)
        assert line[i1] == pytest.approx(l_q, rel=1e-4)
        # an interior point of the line, recomputed from the weights
        t = ts[1]
        mid = jax.tree.map(lambda a, b, t=t: a + t * (b - a), wf, vq["params"])
        assert line[1] == pytest.approx(_train_loss(sol, {"params": mid}), rel=1e-4)
        acc = float(
            np.mean(
                np.argmax(np.asarray(sol["float"]["apply_fn"](vq, sol["float"]["x_test"])), -1)
                == np.asarray(sol["float"]["y_test"])
            )
        )
        assert r["accuracy"] == pytest.approx(acc)


def test_basin_trajectory_starts_at_ptq_and_ends_at_solution(basin):
    res, _, _ = basin
    row = {r["method"]: r for r in res["rows"]}
    for m in ("qat_ste", "qat_float_gradient"):
        tr = res["trajectories"][f"2/{m}"]
        # step 0: latent = float weights, min-max grid = PTQ round to nearest
        assert tr["deployed_loss"][0] == pytest.approx(row["ptq_nearest"]["train_loss"], rel=1e-4)
        assert tr["latent_loss"][0] == pytest.approx(res["float"]["train_loss"], rel=1e-4)
        assert tr["deployed_loss"][-1] == pytest.approx(row[m]["train_loss"], rel=1e-4)
    # two QAT epochs at 2 bits lower the deployed training loss well below PTQ's
    assert row["qat_ste"]["train_loss"] < 0.5 * row["ptq_nearest"]["train_loss"]


def test_basin_outputs_written(basin):
    res, _, out = basin
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    assert saved["rows"] == json.loads(json.dumps(res["rows"]))
    for name in ("loss_along_line_2bit", "trajectory_cosine_2bit", "trajectory_loss_2bit"):
        path = os.path.join(out, "figures", f"{name}.png")
        assert os.path.getsize(path) > 1000
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    assert "figures/loss_along_line_2bit.png" in report
    assert all(m in report for m in BASIN_METHODS)
    assert "python experiments/qat_basin.py --quick --adaround-iterations 20" in report


def test_basin_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="methods must be a non-empty subset"):
        basin_config(methods=("qat_magic",))
    with pytest.raises(ValueError, match="line_max must be >= 1"):
        basin_config(line_max=0.5)
    with pytest.raises(ValueError, match="bits must be"):
        basin_config(bits=(1,))
    with pytest.raises(TypeError, match="BasinConfig"):
        run_basin_study({"bits": (2,)})


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["basin", "digits", "--bits", "2,1"], "--bits"),
        (["basin", "imagenet"], "unknown data set"),
        (["basin", "digits", "--qat-epochs", "0"], "--qat-epochs"),
    ],
)
def test_cli_basin_bad_arguments_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_cli_basin_unwritable_out_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["basin", "digits", "--quick", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bq-jax basin: error: cannot write to --out") and "\n" not in err


def test_range_method_study_quick(tmp_path):
    cfg = range_method_study_config(quick=True, num_seeds=2)
    res = run_range_method_study(cfg, out_dir=str(tmp_path), progress=False)
    assert res["study"] == "qat_range_methods"
    assert [(r["bits"], r["range_method"]) for r in res["rows"]] == [
        (2, m) for m in RANGE_METHOD_CHOICES
    ]
    layers = res["layers"]
    assert len(layers) == 3
    for r in res["rows"]:
        accs = r["accuracies"]
        assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)
        assert r["accuracy_mean"] == pytest.approx(np.mean(accs))
        assert r["accuracy_std"] == pytest.approx(np.std(accs))
        curves = np.asarray(res["curves"][f"2/{r['range_method']}"]["epoch_loss"])
        assert curves.shape == (2, cfg.qat_epochs)
        assert r["loss_curve_spread"] == pytest.approx(float(np.mean(np.std(curves, axis=0))))
        assert r["final_loss_mean"] == pytest.approx(float(curves[:, -1].mean()))
        assert set(r["sqnr_init_db"]) == set(layers) == set(r["sqnr_final_db"])
        assert all(0.0 < v < 30.0 for v in r["sqnr_init_db"].values())
        # QAT at 2 bits beats round-to-nearest PTQ with the same range method or matches it
        assert r["accuracy_mean"] >= r["ptq_accuracy"] - 0.01
    by = {r["range_method"]: r for r in res["rows"]}
    # MSE minimises the weight quantization error; min-max clips nothing (lowest SQNR at 2 bits)
    assert by["mse"]["sqnr_init_mean_db"] > by["minmax"]["sqnr_init_mean_db"]
    assert by["octav"]["sqnr_init_mean_db"] > by["minmax"]["sqnr_init_mean_db"]
    for name in ("loss_curves_2bit", "loss_curve_spread_2bit"):
        assert os.path.getsize(tmp_path / "figures" / f"{name}.png") > 1000
    assert "octav" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="range_methods must be"):
        range_method_study_config(range_methods=("percentile",))


def test_cli_basin_passes_settings_to_the_study(tmp_path, capsys, monkeypatch):
    import bq_jax.qat.basin as basin_module

    seen = {}

    def fake_study(config, *, out_dir, progress):
        seen.update(config=config, out_dir=out_dir, progress=progress)
        return {"findings": [{"finding": "f", "holds": True, "evidence": "e"}]}

    monkeypatch.setattr(basin_module, "run_basin_study", fake_study)
    monkeypatch.setattr(cli, "_enable_compilation_cache", lambda: None)
    out = str(tmp_path / "out")
    argv = ["basin", "digits", "--quick", "--bits", "2,3", "--qat-epochs", "3", "--out", out]
    argv += ["--range-method", "mse"]
    assert cli.main([*argv, "--no-progress", "--seed", "4"]) == 0
    cfg = seen["config"]
    assert cfg.quick and cfg.bits == (2, 3) and cfg.qat_epochs == 3 and cfg.seed == 4
    assert cfg.range_method == "mse"
    assert cfg.adaround_iterations == basin_config(quick=True).adaround_iterations
    assert seen["out_dir"] == out and seen["progress"] is False
    text = capsys.readouterr().out
    assert "[holds] f: e" in text and "results.json" in text


@pytest.mark.slow
def test_full_basin_study_qat_beats_ptq_at_2_bits(tmp_path):
    """The full study (default settings, a few minutes): at 2 bits STE-QAT beats both PTQ
    methods on held-out accuracy by more than 0.02, lies lower on the training loss, and the
    float-gradient ablation does not recover."""
    res = run_basin_study(basin_config(bits=(2,)), out_dir=str(tmp_path), progress=False)
    row = {r["method"]: r for r in res["rows"]}
    best_ptq = max(row["ptq_nearest"]["accuracy"], row["ptq_adaround"]["accuracy"])
    assert row["qat_ste"]["accuracy"] > best_ptq + 0.02
    assert row["qat_lsq"]["accuracy"] > best_ptq + 0.02
    assert row["qat_ste"]["excess_loss"] < row["ptq_adaround"]["excess_loss"]
    assert row["qat_float_gradient"]["accuracy"] < row["qat_ste"]["accuracy"] - 0.02
