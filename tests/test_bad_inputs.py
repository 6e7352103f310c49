"""The bad-input catalogue: one row per bad call a user could make, the exception it must raise
and the words its message must contain (the argument, and what is accepted).

Every row is a call a new user made while trying the library; a row that passed silently (NaN in,
plausible numbers out) or failed deep inside numpy / JAX was a bug, fixed with the row. Rows are
grouped by sub-package; ``test_catalogue_covers_every_package`` keeps the count honest.
"""

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import cli, data, geometry, ptq, qat, quant, studies, train
from bq_jax.quant import QuantConfig

NAN3 = np.float32([1.0, np.nan, 2.0])
INF3 = np.float32([1.0, np.inf, 2.0])
C8 = QuantConfig(bits=8)
A8 = QuantConfig(bits=8, symmetric=False)
W4 = QuantConfig(bits=4, granularity="per_channel")


def _mlp():
    """A tiny linen MLP, its variables and a calibration batch (built lazily per row)."""
    import flax.linen as nn

    model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
    x = jax.random.normal(jax.random.key(0), (32, 4))
    return model, model.init(jax.random.key(1), x), x


def _slice(resolution=8):
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    return geometry.pca_slice(x, resolution=resolution)


def _linear(p, x):
    return x @ p


W43 = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
X4 = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
TOP = np.argmax(X4 @ W43, -1)


def _adaround_nan_objective():
    model, v, x = _mlp()
    cfg = ptq.RoundingConfig(weights=W4, rounding_iters=4, batch_size=8, steps_per_call=2)
    return ptq.optimize_rounding(
        model.apply,
        v,
        x,
        cfg,
        jax.random.key(0),
        objective=lambda params, batch: (jnp.mean(model.apply(params, batch["x"])) * jnp.nan, {}),
        progress=False,
    )


def _adaround_nan_input():
    model, v, x = _mlp()
    cfg = ptq.AdaRoundConfig(weights=W4, rounding_iters=4, batch_size=8, steps_per_call=2)
    return ptq.adaround(model.apply, v, x.at[3, 1].set(jnp.nan), cfg, jax.random.key(0))


def _adaround_nan_weights():
    model, v, x = _mlp()
    v["params"]["layers_0"]["kernel"] = v["params"]["layers_0"]["kernel"].at[0, 0].set(jnp.inf)
    cfg = ptq.AdaRoundConfig(weights=W4, rounding_iters=4, batch_size=8, steps_per_call=2)
    return ptq.adaround(model.apply, v, x, cfg, jax.random.key(0), progress=False)


def _activations(config, x_nan=False):
    model, v, x = _mlp()
    if x_nan:
        x = x.at[0, 0].set(jnp.nan)
    return ptq.quantize_activations(model.apply, v, x, config)


def _qweights_nan():
    _, v, _ = _mlp()
    v["params"]["layers_2"]["kernel"] = v["params"]["layers_2"]["kernel"].at[1, 1].set(jnp.nan)
    return ptq.quantize_weights(v, C8)


def _sweep(apply_fn, resolution=8, variants=1, fn=geometry.sweep_labels):
    stack = jnp.stack([jnp.asarray(W43)] * variants)
    return fn(apply_fn, stack, _slice(resolution))


def _compare_nan():
    slc = _slice()
    x = X4.copy()
    x[0, 0] = np.nan
    return geometry.compare(_linear, W43, jnp.asarray(W43)[None], slc, x, X4)


def _cli(*argv):
    """Runs the CLI; a usage error exits 2 with one line (raised here as SystemExit(2))."""
    code = cli.main(list(argv))
    raise SystemExit(code)


def _dataset(**overrides):
    rng = np.random.default_rng(0)
    fields = dict(
        name="toy",
        x_train=rng.normal(size=(20, 4)).astype(np.float32),
        y_train=rng.integers(0, 3, 20).astype(np.int32),
        x_calibration=rng.normal(size=(10, 4)).astype(np.float32),
        y_calibration=rng.integers(0, 3, 10).astype(np.int32),
        x_heldout=rng.normal(size=(10, 4)).astype(np.float32),
        y_heldout=rng.integers(0, 3, 10).astype(np.int32),
        num_classes=3,
    )
    fields.update(overrides)
    known = {f.name for f in dataclasses.fields(data.Dataset)}
    return data.Dataset(**{k: v for k, v in fields.items() if k in known})


# (id, call, exception type, words the message must contain). The id's prefix is the package.
CATALOGUE = [
    # ---------------------------------------------------------------- quant
    ("quant-fake_quant-nan", lambda: quant.fake_quant(NAN3, C8), ValueError, ["x", "NaN"]),
    ("quant-fake_quant-inf", lambda: quant.fake_quant(INF3, C8), ValueError, ["x", "inf"]),
    ("quant-qparams-nan", lambda: quant.compute_qparams(NAN3, C8), ValueError, ["NaN", "finite"]),
    (
        "quant-fake_quant-empty",
        lambda: quant.fake_quant(np.zeros(0, np.float32), C8),
        ValueError,
        ["empty"],
    ),
    (
        "quant-minmax-empty",
        lambda: quant.minmax(np.zeros((0, 3), np.float32)),
        ValueError,
        ["empty"],
    ),
    ("quant-octav-nan", lambda: quant.octav(NAN3, bits=4), ValueError, ["NaN"]),
    ("quant-percentile-inf", lambda: quant.percentile(INF3, 99.0), ValueError, ["inf"]),
    ("quant-mse-nan", lambda: quant.mse(NAN3, bits=4), ValueError, ["NaN"]),
    ("quant-gaussian-nan", lambda: quant.gaussian(NAN3, bits=4), ValueError, ["NaN"]),
    (
        "quant-percentile-q",
        lambda: quant.percentile(np.ones(4, np.float32), 120.0),
        ValueError,
        ["q", "(0, 100]"],
    ),
    (
        "quant-percentile-str",
        lambda: quant.percentile(np.ones(4, np.float32), "99"),
        TypeError,
        ["q", "float"],
    ),
    ("quant-bits-17", lambda: QuantConfig(bits=17), ValueError, ["bits", "[2, 16]"]),
    ("quant-bits-float", lambda: QuantConfig(bits=4.0), ValueError, ["bits", "int"]),
    ("quant-int_range-bits", lambda: quant.int_range(1), ValueError, ["bits", "[2, 16]"]),
    (
        "quant-granularity",
        lambda: QuantConfig(bits=4, granularity="per_row"),
        ValueError,
        ["granularity"],
    ),
    (
        "quant-rounding",
        lambda: QuantConfig(bits=4, rounding="up"),
        ValueError,
        ["rounding", "nearest"],
    ),
    (
        "quant-range_method",
        lambda: QuantConfig(bits=4, range_method="max"),
        ValueError,
        ["range_method", "minmax"],
    ),
    (
        "quant-percentile-cfg",
        lambda: QuantConfig(bits=4, percentile=0.0),
        ValueError,
        ["percentile", "(0, 100]"],
    ),
    ("quant-fmt", lambda: QuantConfig(fmt="e9m9"), ValueError, ["fmt"]),
    (
        "quant-stochastic-nokey",
        lambda: quant.fake_quant(
            np.ones(3, np.float32), QuantConfig(bits=4, rounding="stochastic")
        ),
        ValueError,
        ["key"],
    ),
    (
        "quant-stochastic-int-key",
        lambda: quant.fake_quant(
            np.ones(3, np.float32), QuantConfig(bits=4, rounding="stochastic"), key=0
        ),
        TypeError,
        ["key", "jax.random.key"],
    ),
    (
        "quant-ifq-int-key",
        lambda: quant.int_fake_quant(
            np.ones(3, np.float32), 1.0, 0, qmin=-8, qmax=7, rounding="stochastic", key=0
        ),
        TypeError,
        ["key", "PRNG"],
    ),
    (
        "quant-ifq-scale0",
        lambda: quant.int_fake_quant(np.ones(3, np.float32), 0.0, 0, qmin=-8, qmax=7),
        ValueError,
        ["scale", "> 0"],
    ),
    (
        "quant-ifq-zp",
        lambda: quant.int_fake_quant(np.ones(3, np.float32), 1.0, 300, qmin=0, qmax=255),
        ValueError,
        ["zero_point", "[0, 255]"],
    ),
    (
        "quant-ifq-int-x",
        lambda: quant.int_fake_quant(np.ones(3, np.int32), 1.0, 0, qmin=-8, qmax=7),
        TypeError,
        ["x", "floating-point"],
    ),
    (
        "quant-ifq-qrange",
        lambda: quant.int_fake_quant(np.ones(3, np.float32), 1.0, 0, qmin=7, qmax=-8),
        ValueError,
        ["qmin < qmax"],
    ),
    (
        "quant-ifq-rank",
        lambda: quant.int_fake_quant(
            np.ones((3, 4), np.float32), np.ones(4, np.float32), 0, qmin=-8, qmax=7
        ),
        ValueError,
        ["scale", "rank"],
    ),
    (
        "quant-dequantize-scale0",
        lambda: quant.dequantize(np.int8([1]), 0.0, 0),
        ValueError,
        ["scale", "> 0"],
    ),
    (
        "quant-dequantize-scale-nan",
        lambda: quant.dequantize(np.int8([1]), np.float32(np.nan), 0),
        ValueError,
        ["scale", "finite"],
    ),
    (
        "quant-dequantize-zp",
        lambda: quant.dequantize(np.int8([1]), 1.0, 300),
        ValueError,
        ["zero_point", "[-128, 127]"],
    ),
    (
        "quant-dequantize-float-codes",
        lambda: quant.dequantize(np.float32([1]), 1.0, 0),
        TypeError,
        ["codes", "integer"],
    ),
    (
        "quant-ffq-fmt",
        lambda: quant.float_fake_quant(np.ones(3, np.float32), "e3m9"),
        ValueError,
        ["fmt"],
    ),
    (
        "quant-axis",
        lambda: quant.fake_quant(
            np.ones((3, 4), np.float32), QuantConfig(bits=4, granularity="per_channel", axis=5)
        ),
        ValueError,
        ["axis", "rank"],
    ),
    (
        "quant-config-type",
        lambda: quant.fake_quant(np.ones(3, np.float32), {"bits": 4}),
        TypeError,
        ["config", "QuantConfig"],
    ),
    # ---------------------------------------------------------------- ptq
    ("ptq-adaround-nan-input", _adaround_nan_input, ValueError, ["calibration_x", "NaN"]),
    ("ptq-adaround-inf-weight", _adaround_nan_weights, ValueError, ["layers_0", "inf"]),
    (
        "ptq-rounding-nan-objective",
        _adaround_nan_objective,
        train.NonFiniteLossError,
        ["loss", "step 0", "floor"],
    ),
    ("ptq-quantize_weights-nan", _qweights_nan, ValueError, ["params/layers_2/kernel", "NaN"]),
    (
        "ptq-quantize_weights-no-match",
        lambda: ptq.quantize_weights({"w": np.ones((2, 2), np.float32)}, C8),
        ValueError,
        ["targets", "paths"],
    ),
    (
        "ptq-activations-nan",
        lambda: _activations(A8, x_nan=True),
        ValueError,
        ["calibration_x", "NaN"],
    ),
    (
        "ptq-activations-stochastic",
        lambda: _activations(QuantConfig(bits=8, rounding="stochastic")),
        ValueError,
        ["stochastic", "nearest"],
    ),
    (
        "ptq-activations-float-fmt",
        lambda: _activations(QuantConfig(fmt="e4m3")),
        ValueError,
        ["fmt='int'"],
    ),
    (
        "ptq-activations-empty",
        lambda: ptq.calibrate_activations(
            _mlp()[0].apply, _mlp()[1], np.zeros((0, 4), np.float32), A8
        ),
        ValueError,
        ["calibration_x", "non-empty"],
    ),
    (
        "ptq-adaround-iters",
        lambda: ptq.AdaRoundConfig(weights=W4, rounding_iters=0),
        ValueError,
        ["rounding_iters"],
    ),
    # ---------------------------------------------------------------- geometry
    (
        "geometry-mask-logits",
        lambda: geometry.boundary_mask(np.zeros((8, 8, 3), np.float32)),
        TypeError,
        ["labels", "integer label map", "argmax"],
    ),
    (
        "geometry-mask-float-labels",
        lambda: geometry.boundary_mask(np.zeros((8, 8), np.float32)),
        TypeError,
        ["labels", "integer"],
    ),
    (
        "geometry-mask-rank",
        lambda: geometry.boundary_mask(np.zeros(8, np.int32)),
        ValueError,
        ["labels", "[..., R, R]"],
    ),
    (
        "geometry-jaccard-label-maps",
        lambda: geometry.boundary_jaccard(np.zeros((8, 8), np.int32), np.ones((8, 8), np.int32)),
        TypeError,
        ["mask_a", "bool", "boundary_mask"],
    ),
    (
        "geometry-jaccard-shapes",
        lambda: geometry.boundary_jaccard(np.zeros((3, 3), bool), np.zeros((4, 4), bool)),
        ValueError,
        ["mask_a", "mask_b"],
    ),
    (
        "geometry-jaccard-tolerance",
        lambda: geometry.boundary_jaccard(
            np.zeros((3, 3), bool), np.zeros((3, 3), bool), tolerance=-1
        ),
        ValueError,
        ["tolerance", ">= 0"],
    ),
    (
        "geometry-sweep-one-row",
        lambda: _sweep(lambda p, x: (x @ p)[:1]),
        ValueError,
        ["apply_fn", "one row", "(1, 3)"],
    ),
    (
        "geometry-sweep-int32-limit",
        lambda: _sweep(_linear, resolution=50000),
        ValueError,
        ["int32", "resolution"],
    ),
    (
        "geometry-sweep-logits-limit",
        lambda: _sweep(_linear, resolution=20000, variants=8, fn=geometry.sweep_logits),
        ValueError,
        ["int32", "classes"],
    ),
    (
        "geometry-sweep-int-logits",
        lambda: _sweep(lambda p, x: jnp.argmax(x @ p, -1)[:, None].repeat(3, 1)),
        ValueError,
        ["float logits"],
    ),
    (
        "geometry-pca-empty",
        lambda: geometry.pca_slice(np.zeros((0, 4), np.float32), resolution=8),
        ValueError,
        ["x", "non-empty"],
    ),
    (
        "geometry-pca-nan",
        lambda: geometry.pca_slice(np.where(np.eye(4) > 0, np.nan, 1.0), resolution=8),
        ValueError,
        ["NaN"],
    ),
    (
        "geometry-pca-resolution",
        lambda: geometry.pca_slice(X4, resolution=1),
        ValueError,
        ["resolution", ">= 2"],
    ),
    (
        "geometry-radius-grad_tol",
        lambda: geometry.margin_radius(_linear, W43, X4, float_top=TOP, grad_tol=-1.0),
        ValueError,
        ["grad_tol", ">= 0"],
    ),
    (
        "geometry-radius-zero-basis",
        lambda: geometry.margin_radius(
            _linear, W43, X4, float_top=TOP, basis=np.zeros((4, 2), np.float32)
        ),
        ValueError,
        ["basis", "orthonormal"],
    ),
    (
        "geometry-radius-nan-x",
        lambda: geometry.margin_radius(_linear, W43, np.where(X4 > 1, np.nan, X4), float_top=TOP),
        ValueError,
        ["inputs", "NaN"],
    ),
    (
        "geometry-radius-nan-logits",
        lambda: geometry.margin_radius(lambda p, x: x @ p * jnp.nan, W43, X4, float_top=TOP),
        ValueError,
        ["apply_fn", "NaN"],
    ),
    (
        "geometry-radius-float_top",
        lambda: geometry.margin_radius(_linear, W43, X4, float_top=TOP[:2]),
        ValueError,
        ["float_top", "int[N]"],
    ),
    (
        "geometry-compare-nan-inputs",
        _compare_nan,
        ValueError,
        ["heldout_x", "inputs, not the parameters"],
    ),
    (
        "geometry-evaluate-nan-inputs",
        lambda: geometry.evaluate_logits(
            _linear, jnp.asarray(W43)[None], np.where(X4 > 1, np.nan, X4)
        ),
        ValueError,
        ["inputs", "not the parameters"],
    ),
    # ---------------------------------------------------------------- data
    ("data-unknown", lambda: data.load_dataset("svhn"), ValueError, ["svhn", "digits"]),
    ("data-batch_size", lambda: data.num_batches(10, 0), ValueError, ["batch_size"]),
    (
        "data-batches-mismatch",
        lambda: list(data.batches(np.ones((4, 2)), np.ones(3), 2)),
        ValueError,
        ["x", "y"],
    ),
    (
        "data-split-labels",
        lambda: data.validate_split(
            np.ones((4, 2), np.float32), np.array([0, 1, 2, 9]), num_classes=3, name="train"
        ),
        ValueError,
        ["train", "labels"],
    ),
    # ---------------------------------------------------------------- train
    ("train-config-epochs", lambda: train.TrainConfig(epochs=0), ValueError, ["epochs"]),
    (
        "train-config-optimizer",
        lambda: train.TrainConfig(optimizer="adamw2"),
        ValueError,
        ["optimizer"],
    ),
    (
        "train-config-lr",
        lambda: train.TrainConfig(learning_rate=float("nan")),
        ValueError,
        ["learning_rate"],
    ),
    (
        "train-cross_entropy-labels",
        lambda: train.cross_entropy(np.zeros((4, 3), np.float32), np.zeros(5, np.int32)),
        ValueError,
        ["labels"],
    ),
    (
        "train-load-missing",
        lambda: train.load_checkpoint("/nonexistent/ckpt.msgpack"),
        (FileNotFoundError, train.CheckpointError),
        ["nonexistent"],
    ),
    # ---------------------------------------------------------------- qat
    (
        "qat-config-weights",
        lambda: qat.QATConfig(weights="int4"),
        (TypeError, ValueError),
        ["weights"],
    ),
    (
        "qat-config-activation_bits",
        lambda: qat.QATConfig(weights=W4, activation_bits=1),
        ValueError,
        ["activation_bits", "[2, 16]"],
    ),
    (
        "qat-config-range_update_every",
        lambda: qat.QATConfig(weights=W4, range_update_every=-1),
        ValueError,
        ["range_update_every", ">= 0"],
    ),
    (
        "qat-lanczos-k",
        lambda: qat.lanczos_top_eigs(lambda v: v, 4, 0, key=jax.random.key(0)),
        ValueError,
        ["k"],
    ),
    # ---------------------------------------------------------------- studies
    (
        "studies-resolution",
        lambda: studies.StudyConfig(resolution=50000),
        ValueError,
        ["resolution", "[8, 4096]"],
    ),
    (
        "studies-basin-resolution",
        lambda: studies.BasinConfig(resolution=50000),
        ValueError,
        ["resolution", "[8, 4096]"],
    ),
    ("studies-seeds", lambda: studies.StudyConfig(seeds=()), ValueError, ["seeds"]),
    (
        "studies-band_quantile",
        lambda: studies.StudyConfig(band_quantile=1.5),
        ValueError,
        ["band_quantile"],
    ),
    (
        "studies-unknown-study",
        lambda: studies.run_study(studies.StudyConfig(), "nope"),
        ValueError,
        ["nope"],
    ),
    ("studies-basin-bits", lambda: studies.BasinConfig(bits=(1,)), ValueError, ["bits"]),
    # ---------------------------------------------------------------- cli
    (
        "cli-qat-basin-resolution",
        lambda: _cli("qat-basin", "digits", "--resolution", "50000"),
        SystemExit,
        ["2"],
    ),
    (
        "cli-reproduce-resolution",
        lambda: _cli("reproduce", "digits", "--resolution", "50000"),
        SystemExit,
        ["2"],
    ),
    ("cli-unknown-dataset", lambda: _cli("reproduce", "svhn"), SystemExit, ["2"]),
    ("cli-bad-bits", lambda: _cli("bits-sweep", "digits", "--max-bits", "99"), SystemExit, ["2"]),
]

IDS = [row[0] for row in CATALOGUE]


def test_catalogue_covers_every_package():
    counts = collections.Counter(i.split("-")[0] for i in IDS)
    assert len(set(IDS)) == len(IDS)
    assert len(IDS) >= 60, counts
    for package in ("quant", "ptq", "qat", "geometry", "data", "train", "studies", "cli"):
        assert counts[package] >= 4, counts


@pytest.mark.parametrize("call, error, words", [row[1:] for row in CATALOGUE], ids=IDS)
def test_bad_input(call, error, words, capsys):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    if error is SystemExit:  # the CLI: one line on stderr, no traceback
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


# ----------------------------------------------------------------------------- accepted inputs


def test_numpy_scalars_are_accepted_like_python_numbers():
    """What a user's sweep loop produces (np.int64 bit widths, np.float32 percentiles)."""
    x = np.random.default_rng(0).normal(size=64).astype(np.float32)
    for bits in np.arange(2, 9):  # np.int64
        cfg = QuantConfig(bits=bits, range_method="percentile", percentile=np.float32(99.0))
        assert np.all(np.isfinite(quant.fake_quant(x, cfg)))
        assert quant.int_range(bits) == quant.int_range(int(bits))
    assert quant.percentile(x, np.float32(99.0)) == quant.percentile(x, 99.0)
    np.testing.assert_array_equal(
        quant.mse(x, bits=4, num_candidates=np.int64(8)).hi,
        quant.mse(x, bits=4, num_candidates=8).hi,
    )
    s, _ = quant.octav_fixed_point(x, bits=np.int64(3), tol=np.float32(1e-4), max_iter=np.int64(5))
    assert np.all(np.isfinite(s))
    h = quant.adaround_h(jnp.zeros(3), zeta=np.float64(1.1), gamma=np.float64(-0.1))
    np.testing.assert_array_equal(h, quant.adaround_h(jnp.zeros(3)))


def test_large_finite_asymmetric_range_does_not_overflow():
    """[1e38, -3e38, 1] at 8 bits: hi - lo overflows float32; the scale must not."""
    x = np.float32([1e38, -3e38, 1.0])
    qp = quant.compute_qparams(x, A8)
    assert np.isfinite(float(qp.scale)) and 0 <= int(qp.zero_point) <= 255
    y = np.asarray(quant.fake_quant(x, A8))
    assert np.all(np.isfinite(y))
    # Within half a step (+ rounding of the scale) of the inputs.
    np.testing.assert_allclose(y, x, rtol=0, atol=0.5001 * float(qp.scale))
