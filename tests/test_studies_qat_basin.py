"""The QAT basin study (bq_jax.studies.qat_basin) through the runner on quick settings: schema,
deployed kernels on their grids, line losses against independently computed losses, outputs,
config validation and the `bq-jax qat-basin` command."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bq_jax import cli
from bq_jax.studies import SCHEMA_VERSION, BasinConfig, make_config, qat_basin, run
from bq_jax.studies.context import SeedContext
from bq_jax.studies.qat_basin import BASIN_METHODS, QAT_METHODS

# Quick settings, shrunk further where it does not change what is checked.
_BASIN = dict(rounding_iters=20, hessian_iters=12, resolution=16, line_points=7, progress=False)
_COMMAND = "python experiments/qat_basin.py --quick"


@pytest.fixture(scope="module")
def basin(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("basin"))
    config = make_config(BasinConfig, quick=True, **_BASIN)
    summary = run(config, out, ["qat_basin"], command=_COMMAND)
    ctx = SeedContext(config, 0, cache_dir=os.path.join(out, "checkpoints"))
    sol = qat_basin.solve(config, 0, ctx)
    return summary.results, sol, ctx, out


def _train_loss(ctx, variables) -> float:
    logits = ctx.apply_fn(variables, jnp.asarray(ctx.inputs("train")))
    return float(
        optax.softmax_cross_entropy_with_integer_labels(
            logits, jnp.asarray(ctx.targets("train"))
        ).mean()
    )


def test_basin_schema(basin):
    results, _, _, _ = basin
    assert results["schema_version"] == SCHEMA_VERSION and results["quick"] is True
    assert results["studies"] == ["qat_basin"] and results["seeds"] == [0]
    res = results["per_seed"][0]["qat_basin"]
    agg = results["qat_basin"]
    assert agg["bits"] == [2] and results["config"]["bits"] == [2]
    assert [(r["bits"], r["method"]) for r in res["rows"]] == [(2, m) for m in BASIN_METHODS]
    assert [(r["bits"], r["method"]) for r in agg["rows"]] == [(2, m) for m in BASIN_METHODS]
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
    assert res["num_heldout_examples"] == agg["num_heldout_examples"] > 0
    for r in res["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert 0.0 <= r["flip_rate"] <= 1.0 and 0.0 <= r["boundary_jaccard_distance"] <= 1.0
        assert 0.0 <= r["sharp_fraction"] <= 1.0 + 1e-9
        assert r["displacement_norm"] > 0 and r["line_barrier"] >= 0.0
        assert r["line_loss_max"] >= r["train_loss"] - 1e-6
        assert r["excess_loss"] == pytest.approx(r["train_loss"] - res["float_train_loss"])
        assert len(res["lines"][f"2/{r['method']}"]) == len(ts)
    # one seed: the aggregate is that seed's numbers with zero spread
    for r, a in zip(res["rows"], agg["rows"], strict=True):
        assert a["n_seeds"] == 1 and a["accuracy"] == r["accuracy"] and a["accuracy_std"] == 0.0
    assert set(res["trajectories"]) == {f"2/{m}" for m in QAT_METHODS}
    for name, tr in res["trajectories"].items():
        n = len(tr["step"])
        assert n >= 2 and tr["step"][0] == 0
        assert all(len(v) == n for v in tr.values()), name
        assert tr["cosine_step"][-1] is None
        assert all(c is None or -1.0 - 1e-9 <= c <= 1.0 + 1e-9 for c in tr["cosine_quantized"])
    assert len(res["trajectory_summary"]) == len(QAT_METHODS) == len(agg["trajectory_summary"])
    found = results["findings"]
    assert found and all(f["study"] == "qat_basin" and isinstance(f["holds"], bool) for f in found)


def test_basin_deployed_kernels_on_their_grids(basin):
    _, sol, ctx, _ = basin
    qmin, qmax = -2, 1  # signed symmetric 2-bit codes
    for method in BASIN_METHODS:
        s = sol[(2, method)]
        params = s["variables"]["params"]
        assert set(s["scales"]) == {f"params/{layer}/kernel" for layer in params}
        assert (s["qat"] is None) == method.startswith("ptq")
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
                    leaf["bias"], ctx.float_params["params"][layer]["bias"]
                )


def test_basin_line_losses_match_independent_losses(basin):
    results, sol, ctx, _ = basin
    res = results["per_seed"][0]["qat_basin"]
    ts = res["line_t"]
    i1 = ts.index(1.0)
    l_float = _train_loss(ctx, ctx.float_params)
    assert res["float_train_loss"] == pytest.approx(l_float, rel=1e-5)
    wf = ctx.float_params["params"]
    for r in res["rows"]:
        line = res["lines"][f"2/{r['method']}"]
        vq = sol[(2, r["method"])]["variables"]
        assert line[0] == pytest.approx(l_float, rel=1e-5)
        l_q = _train_loss(ctx, vq)
        assert r["train_loss"] == pytest.approx(l_q, rel=1e-4)
        assert line[i1] == pytest.approx(l_q, rel=1e-4)
        # an interior point of the line, recomputed from the weights
        t = ts[1]
        mid = jax.tree.map(lambda a, b, t=t: a + t * (b - a), wf, vq["params"])
        assert line[1] == pytest.approx(_train_loss(ctx, {"params": mid}), rel=1e-4)
        acc = float(
            np.mean(
                np.argmax(np.asarray(ctx.apply_fn(vq, ctx.inputs("heldout"))), -1)
                == np.asarray(ctx.targets("heldout"))
            )
        )
        assert r["accuracy"] == pytest.approx(acc)


def test_basin_trajectory_starts_at_ptq_and_ends_at_solution(basin):
    results, _, _, _ = basin
    res = results["per_seed"][0]["qat_basin"]
    row = {r["method"]: r for r in res["rows"]}
    for m in ("qat_ste", "qat_float_gradient"):
        tr = res["trajectories"][f"2/{m}"]
        # step 0: latent = float weights, min-max grid = PTQ round to nearest
        assert tr["deployed_loss"][0] == pytest.approx(row["ptq_nearest"]["train_loss"], rel=1e-4)
        assert tr["latent_loss"][0] == pytest.approx(res["float_train_loss"], rel=1e-4)
        assert tr["deployed_loss"][-1] == pytest.approx(row[m]["train_loss"], rel=1e-4)
    # two QAT epochs at 2 bits lower the deployed training loss well below PTQ's
    assert row["qat_ste"]["train_loss"] < 0.5 * row["ptq_nearest"]["train_loss"]


def test_basin_outputs_written(basin):
    results, _, _, out = basin
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    res = results["per_seed"][0]["qat_basin"]
    assert saved["per_seed"][0]["qat_basin"]["rows"] == json.loads(json.dumps(res["rows"]))
    for name in ("loss_along_line_2bit", "trajectory_cosine_2bit", "trajectory_loss_2bit"):
        path = os.path.join(out, "figures", f"{name}.png")
        assert os.path.getsize(path) > 1000
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    assert "figures/loss_along_line_2bit.png" in report
    assert all(m in report for m in BASIN_METHODS)
    assert _COMMAND in report


def test_basin_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="methods"):
        make_config(BasinConfig, methods=("qat_magic",))
    with pytest.raises(ValueError, match="line_max"):
        make_config(BasinConfig, line_max=0.5)
    with pytest.raises(ValueError, match="bits"):
        make_config(BasinConfig, bits=(1,))
    with pytest.raises(ValueError, match="range_method"):
        make_config(BasinConfig, range_method="kl")
    with pytest.raises(ValueError, match="rounding_iters"):
        make_config(BasinConfig, rounding_iters=0)
    with pytest.raises(TypeError, match="config"):
        run({"bits": (2,)}, "/nonexistent", ["qat_basin"])
    assert BasinConfig().seeds == (0,) and BasinConfig().resolution == 128
    quick = make_config(BasinConfig, quick=True)
    assert quick.bits == (2,) and quick.rounding_iters == 40 and quick.resolution == 24


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["qat-basin", "digits", "--bits", "2,1"], "--bits"),
        (["qat-basin", "imagenet"], "unknown data set"),
        (["qat-basin", "digits", "--qat-epochs", "0"], "--qat-epochs"),
    ],
)
def test_cli_basin_bad_arguments_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_cli_basin_unwritable_out_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["qat-basin", "digits", "--quick", "--out", str(blocker / "sub")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bq-jax qat-basin: error:") and "--out is not a writable dir" in err
    assert "\n" not in err


def test_cli_basin_passes_settings_to_the_study(tmp_path, capsys, monkeypatch):
    from bq_jax.studies import runner

    seen = {}

    class _Summary:
        def describe(self):
            return "wrote results.json"

    def fake_run(config, out, studies, *, command=None):
        seen.update(config=config, out=out, studies=studies, command=command)
        return _Summary()

    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.setattr(cli, "_enable_compilation_cache", lambda: None)
    out = str(tmp_path / "out")
    argv = ["qat-basin", "digits", "--quick", "--bits", "2,3", "--qat-epochs", "3", "--out", out]
    argv += ["--range-method", "mse"]
    assert cli.main([*argv, "--no-progress", "--seeds", "4"]) == 0
    cfg = seen["config"]
    assert isinstance(cfg, BasinConfig)
    assert cfg.quick and cfg.bits == (2, 3) and cfg.qat_epochs == 3 and cfg.seeds == (4,)
    assert cfg.range_method == "mse" and cfg.progress is False
    assert cfg.rounding_iters == make_config(BasinConfig, quick=True).rounding_iters
    assert seen["out"] == out and seen["studies"] == ["qat_basin"]
    assert "results.json" in capsys.readouterr().out


@pytest.mark.slow
def test_full_basin_study_qat_beats_ptq_at_2_bits(tmp_path):
    """The full study (default settings, a few minutes): at 2 bits STE-QAT beats both PTQ
    methods on held-out accuracy by more than 0.02, lies lower on the training loss, and the
    float-gradient ablation does not recover."""
    config = BasinConfig(bits=(2,), progress=False)
    res = run(config, str(tmp_path), ["qat_basin"]).results["qat_basin"]
    row = {r["method"]: r for r in res["rows"]}
    best_ptq = max(row["ptq_nearest"]["accuracy"], row["ptq_adaround"]["accuracy"])
    assert row["qat_ste"]["accuracy"] > best_ptq + 0.02
    assert row["qat_lsq"]["accuracy"] > best_ptq + 0.02
    assert row["qat_ste"]["excess_loss"] < row["ptq_adaround"]["excess_loss"]
    assert row["qat_float_gradient"]["accuracy"] < row["qat_ste"]["accuracy"] - 0.02
