"""QAT: exact STE / LSQ gradients, the training loop, its guards, checkpoints and determinism."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bq_jax import quant
from bq_jax.data import batch_indices
from bq_jax.qat import (
    QATConfig,
    QATDivergedError,
    make_qat_program,
    qat_checkpoint_path,
    qat_train,
    resolve_plan,
)
from bq_jax.qat.quantizers import init_qparams, quantize_leaf
from bq_jax.train import load_train_state


class _MLP(nn.Module):
    hidden: tuple = (16,)
    classes: int = 3

    @nn.compact
    def __call__(self, x):
        for h in self.hidden:
            x = nn.relu(nn.Dense(h)(x))
        return nn.Dense(self.classes)(x)


@dataclasses.dataclass(frozen=True)
class _Model:
    """The ``bq_jax.models.Model`` interface: ``init(key)``, ``apply_fn(variables, x)``."""

    module: nn.Module
    features: int = 6

    def init(self, key):
        return self.module.init(key, jnp.zeros((1, self.features), jnp.float32))

    def apply_fn(self, variables, x):
        return self.module.apply(variables, x)


def _data(n=96, features=6, classes=3, seed=0):
    rng = np.random.RandomState(seed)
    centers = rng.normal(size=(classes, features)) * 2.0
    y = rng.randint(0, classes, size=n).astype(np.int32)
    x = (centers[y] + rng.normal(size=(n, features))).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


@pytest.fixture(scope="module")
def setup():
    model = _Model(_MLP())
    x, y = _data()
    variables = model.init(jax.random.key(0))
    # A short float fit so QAT starts from a trained point, like in practice.
    opt = optax.adam(1e-2)
    p, st = variables["params"], opt.init(variables["params"])

    def loss(p):
        logits = model.apply_fn({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    step = jax.jit(lambda p, st: _apply(opt, p, st, jax.grad(loss)(p)))
    for _ in range(100):
        p, st = step(p, st)
    return model, {"params": p}, (x, y)


def _apply(opt, p, st, g):
    # optax's Adam bias correction computes `decay ** count` (Python float, int32 count), a
    # promotion that strict mode refuses: the reference update runs under standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        u, st = opt.update(g, st, p)
    return optax.apply_updates(p, u), st


W4 = quant.QuantConfig(bits=4, symmetric=True, granularity="per_channel")
W2 = quant.QuantConfig(bits=2, symmetric=True, granularity="per_channel")


# ----------------------------------------------------------------------------- quantizers


@pytest.mark.parametrize(
    "config",
    [
        W4,
        quant.QuantConfig(bits=3, symmetric=False, granularity="per_tensor", range_method="mse"),
        quant.QuantConfig(bits=8, fmt="e4m3", granularity="per_channel"),
        quant.QuantConfig(bits=4, fmt="e2m1", granularity="per_tensor"),
    ],
    ids=["int4_pc", "int3_asym_mse", "e4m3", "e2m1"],
)
@pytest.mark.parametrize("learned", [False, True], ids=["range", "lsq"])
def test_ste_gradient_is_masked_float_gradient_exactly(config, learned):
    """dL/dW through Q equals dL/dW_q of the float layer at W_q, times the clip mask."""
    kx, kw, kt = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(kx, (32, 12))
    w = jax.random.normal(kw, (12, 5)) * 0.7
    t = jax.random.normal(kt, (32, 5))
    variables = {"params": {"Dense_0": {"kernel": w}}}
    (leaf,) = resolve_plan(variables, config, targets=r"kernel$")
    scales, zps = init_qparams(variables, (leaf,))
    # Shrink the scale so that some weights fall outside the clip range.
    s = scales[leaf.path] * 0.6
    z = zps[leaf.path]

    def loss_q(w):
        return jnp.sum((x @ quantize_leaf(w, leaf, s, z, learned=learned) - t) ** 2)

    def loss_f(wq):
        return jnp.sum((x @ wq - t) ** 2)

    wq = quantize_leaf(w, leaf, s, z, learned=learned)
    if config.is_int:
        qmin, qmax = leaf.qmin, leaf.qmax
        code = jnp.round(w / s) + jnp.asarray(z, jnp.float32)
        mask = (code >= qmin) & (code <= qmax)
    else:
        mask = jnp.abs(w / s) <= 448.0 if config.fmt == "e4m3" else jnp.abs(w / s) <= 6.0
    assert 0 < int(jnp.sum(~mask)) < w.size  # the test really exercises both sides
    got = jax.jit(jax.grad(loss_q))(w)
    mask = mask.astype(jnp.float32)
    want = jax.jit(jax.grad(loss_f))(wq) * mask
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    eager = jax.grad(loss_q)(w)
    np.testing.assert_array_equal(np.asarray(eager), np.asarray(jax.grad(loss_f)(wq) * mask))
    # jit vs eager: the same math, XLA may sum the matmul in another order.
    np.testing.assert_allclose(np.asarray(eager), np.asarray(got), rtol=1e-5, atol=1e-5)


def test_lsq_forward_is_bit_identical_to_fake_quant():
    w = jax.random.normal(jax.random.key(2), (64, 8))
    for cfg in (W4, W2, quant.QuantConfig(bits=5, symmetric=False)):
        variables = {"params": {"d": {"kernel": w}}}
        (leaf,) = resolve_plan(variables, cfg, targets=None)
        scales, zps = init_qparams(variables, (leaf,))
        s, z = scales[leaf.path], zps[leaf.path]
        want = quant.fake_quant(w, cfg)
        np.testing.assert_array_equal(np.asarray(quantize_leaf(w, leaf, s, z, learned=True)), want)
        np.testing.assert_array_equal(np.asarray(quantize_leaf(w, leaf, s, z, learned=False)), want)


def test_lsq_scale_gradient_matches_formula():
    """dy/ds = g (round(w/s) - w/s) inside, g qmin / g qmax outside (Esser et al. 2020)."""
    kw, kc = jax.random.split(jax.random.key(3))
    w = np.asarray(jax.random.normal(kw, (40, 6)), np.float32)
    c = np.asarray(jax.random.normal(kc, (40, 6)), np.float32)
    s = np.full((1, 6), 0.3, np.float32) * np.arange(1, 7, dtype=np.float32)[None] / 3
    qmin, qmax = -4, 3
    g = quant.lsq_grad_scale(40, qmax)
    assert g == pytest.approx(1 / np.sqrt(40 * 3), rel=1e-12)

    def f(s):
        y = quant.int_fake_quant(w, s, 0, qmin=qmin, qmax=qmax, scale_grad="lsq", grad_scale=g)
        return jnp.sum(jnp.asarray(c) * y)

    got = np.asarray(jax.grad(f)(jnp.asarray(s)))
    v = w / s
    r = np.round(v)  # numpy rounds half to even, like jnp.round
    factor = np.where(r < qmin, qmin, np.where(r > qmax, qmax, r - v))
    want = g * np.sum(c * factor, axis=0, keepdims=True)
    assert np.any(r < qmin) and np.any(r > qmax)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Floating-point grid: dy/ds = g (Q(v) - v) inside, g Q(v) = +-g * max outside.
    sf = jnp.float32(0.25)
    gf = 0.05

    def ff(s):
        y = quant.float_fake_quant(w, "e2m1", scale=s, scale_grad="lsq", grad_scale=gf)
        return jnp.sum(jnp.asarray(c) * y)

    vf = w / np.float32(0.25)
    qv = np.asarray(
        quant.fake_quant(
            jnp.asarray(vf),
            quant.QuantConfig(bits=4, fmt="e2m1"),
            qparams=quant.QParams(jnp.float32(1.0), jnp.int32(0), None, None),
        )
    )
    want_f = gf * np.sum(c * np.where(np.abs(vf) <= 6.0, qv - vf, qv))
    assert np.any(np.abs(vf) > 6.0)
    np.testing.assert_allclose(float(jax.grad(ff)(sf)), want_f, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the loop


def _loss(apply_fn, variables, x, y):
    return float(optax.softmax_cross_entropy_with_integer_labels(apply_fn(variables, x), y).mean())


def test_short_qat_lowers_loss_compiles_once_and_is_deterministic(setup):
    model, variables, (x, y) = setup
    cfg = QATConfig(weights=W2, epochs=6, batch_size=16, learning_rate=3e-3)
    res = qat_train(model, variables, (x, y), cfg, jax.random.key(0), progress=False)
    ptq_loss = _loss(model.apply_fn, init_quantized(model, variables, cfg), x, y)
    assert res.traces == 1
    assert res.history["loss"].shape == (6 * (96 // 16),)
    assert _loss(res.apply_fn, res.variables, x, y) < 0.7 * ptq_loss
    assert res.history["epoch_loss"][-1] < res.history["epoch_loss"][0]
    again = qat_train(model, variables, (x, y), cfg, jax.random.key(0), progress=False)
    assert again.traces == 0  # the compiled step of an identical setup is reused
    np.testing.assert_array_equal(res.history["loss"], again.history["loss"])
    for a, b in zip(jax.tree.leaves(res.variables), jax.tree.leaves(again.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = qat_train(model, variables, (x, y), cfg, jax.random.key(1), progress=False)
    assert not np.array_equal(res.history["loss"], other.history["loss"])


def init_quantized(model, variables, cfg):
    prog = make_qat_program(model, variables, cfg)
    return prog.deploy(prog.init(variables, None))


def test_deployed_kernels_lie_on_their_grid(setup):
    model, variables, data = setup
    for w in (W2, quant.QuantConfig(bits=4, fmt="e2m1", granularity="per_channel")):
        for mode in ("range", "learned"):
            cfg = QATConfig(weights=w, scale_mode=mode, epochs=2, batch_size=32)
            res = qat_train(model, variables, data, cfg, jax.random.key(0), progress=False)
            for path, s in res.scales.items():
                layer = path.split("/")[1]
                k = res.variables["params"][layer]["kernel"]
                again = quant.fake_quant(
                    k, w, qparams=quant.QParams(s, res.zero_points[path], *_qrange(w))
                )
                np.testing.assert_array_equal(np.asarray(again), np.asarray(k))


def _qrange(cfg):
    return cfg.qrange if cfg.is_int else (None, None)


def test_bits16_tracks_float_training(setup):
    """int16 per-tensor QAT is Adam on the straight-through gradient, and follows plain float
    Adam on the same batches."""
    model, variables, (x, y) = setup
    w16 = quant.QuantConfig(bits=16, symmetric=True)
    cfg = QATConfig(weights=w16, epochs=3, batch_size=16, learning_rate=1e-3)
    key = jax.random.key(5)
    res = qat_train(model, variables, (x, y), cfg, key, progress=False)
    opt = optax.adam(1e-3)

    def adam_run(quantize):
        @jax.jit
        def step(p, st, xb, yb):
            def loss(w):
                logits = model.apply_fn({"params": w}, xb)
                return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

            # Loss and gradient at quantize(p), the update applied to p.
            l, g = jax.value_and_grad(loss)(quantize(p))
            return *_apply(opt, p, st, g), l

        p, st = variables["params"], opt.init(variables["params"])
        losses = []
        for epoch in range(3):
            for b in batch_indices(x.shape[0], 16, key=key, epoch=epoch, drop_last=True):
                p, st, l = step(p, st, x[b], y[b])
                losses.append(float(l))
        return p, losses

    def int16_kernels(p):
        return jax.tree_util.tree_map_with_path(
            lambda path, a: quant.fake_quant(a, w16) if path[-1].key == "kernel" else a, p
        )

    p_ste, ste_losses = adam_run(int16_kernels)
    p_float, float_losses = adam_run(lambda p: p)
    # The QAT update is Adam on the straight-through gradient: the same numbers.
    np.testing.assert_allclose(res.history["loss"], ste_losses, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(res.params["params"]), jax.tree.leaves(p_ste), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    # 16-bit grid: relative weight error ~ 2^-15, so curves agree to ~1e-4 relative. The QAT
    # loss is taken at the int16 weights; near this fitted point (losses ~0.01) a relative
    # change of the cross-entropy is an absolute change of the margin (~|z| 2^-15, a few 1e-5
    # to 3e-4 here), hence the absolute floor of 1e-5 for the smallest losses.
    np.testing.assert_allclose(res.history["loss"], float_losses, rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(res.params["params"]), jax.tree.leaves(p_float), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_gradient_at_float_vs_quantized(setup):
    """STE evaluates loss and gradient at Q(w); the ablation at the float w."""
    model, variables, (x, y) = setup
    key = jax.random.key(0)
    base = dict(weights=W2, epochs=1, batch_size=16, learning_rate=3e-3)
    ste = qat_train(model, variables, (x, y), QATConfig(**base), key, progress=False)
    abl = qat_train(
        model, variables, (x, y), QATConfig(**base, gradient_at="float"), key, progress=False
    )
    b0 = batch_indices(x.shape[0], 16, key=key, epoch=0, drop_last=True)[0]
    wq = init_quantized(model, variables, QATConfig(**base))
    np.testing.assert_allclose(
        ste.history["loss"][0], _loss(model.apply_fn, wq, x[b0], y[b0]), rtol=1e-5
    )
    np.testing.assert_allclose(
        abl.history["loss"][0], _loss(model.apply_fn, variables, x[b0], y[b0]), rtol=1e-5
    )
    assert abl.history["loss"][0] < ste.history["loss"][0]


def test_activation_quantization_and_deploy(setup):
    model, variables, (x, y) = setup
    for mode in ("range", "learned"):
        cfg = QATConfig(weights=W4, activation_bits=8, scale_mode=mode, epochs=2, batch_size=16)
        res = qat_train(model, variables, (x, y), cfg, jax.random.key(0), progress=False)
        assert set(res.variables["activation_qparams"]) == {"Dense_0", "Dense_1"}
        acc = float(jnp.mean(jnp.argmax(res.apply_fn(res.variables, x), -1) == y))
        float_acc = float(jnp.mean(jnp.argmax(model.apply_fn(variables, x), -1) == y))
        assert acc >= float_acc - 0.05


# ----------------------------------------------------------------------------- guards


def test_learned_scale_guard_keeps_scales_positive(setup):
    model, variables, data = setup
    cfg = QATConfig(
        weights=W4,
        scale_mode="learned",
        optimizer="sgd",
        learning_rate=1e-3,
        scale_learning_rate=1e4,
        epochs=2,
        batch_size=16,
        min_scale_ratio=0.05,
    )
    prog = make_qat_program(model, variables, cfg)
    state = prog.init(variables, None)
    init = {p: np.asarray(s) for p, s in state.scales.items()}
    res = qat_train(model, variables, data, cfg, jax.random.key(0), progress=False)
    assert res.history["scales_clamped"].max() > 0
    for p, s in res.scales.items():
        s = np.asarray(s)
        assert np.all(s > 0)
        assert np.all(s >= np.float32(0.05) * init[p] * (1 - 1e-6))
    assert np.all(np.isfinite(res.history["loss"]))


def test_variables_of_another_model_are_refused(setup):
    model, variables, data = setup
    other = _Model(_MLP(hidden=(8,))).init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"another model.*|shape/dtype mismatch"):
        qat_train(
            model, other, data, QATConfig(weights=W4, epochs=1), jax.random.key(0), progress=False
        )
    with pytest.raises(ValueError, match="missing leaves"):
        qat_train(
            model,
            {"params": {"Dense_0": variables["params"]["Dense_0"]}},
            data,
            QATConfig(weights=W4, epochs=1),
            jax.random.key(0),
            progress=False,
        )


def test_checkpoint_of_another_model_is_refused(setup, tmp_path):
    model, variables, data = setup
    other_model = _Model(_MLP(hidden=(8,)))
    other = other_model.init(jax.random.key(0))
    cfg = QATConfig(weights=W4, epochs=1, batch_size=32)
    qat_train(
        other_model,
        other,
        data,
        cfg,
        jax.random.key(0),
        progress=False,
        checkpoint_dir=str(tmp_path),
    )
    with pytest.raises(ValueError, match="does not match this model"):
        qat_train(
            model,
            variables,
            data,
            cfg,
            jax.random.key(0),
            progress=False,
            checkpoint_dir=str(tmp_path),
        )
    prog = make_qat_program(model, variables, cfg)
    with pytest.raises(ValueError, match="does not match this model"):
        load_train_state(qat_checkpoint_path(tmp_path), prog.init(variables, None))


def test_resume_from_checkpoint_is_bit_identical(setup, tmp_path):
    model, variables, data = setup
    cfg = QATConfig(weights=W2, epochs=3, batch_size=16, learning_rate=3e-3)
    full = qat_train(model, variables, data, cfg, jax.random.key(0), progress=False)
    part = qat_train(
        model,
        variables,
        data,
        cfg,
        jax.random.key(0),
        progress=False,
        checkpoint_dir=str(tmp_path),
        callback=lambda e, s, r: e == 0,
    )
    assert int(part.state.step) == 96 // 16
    done = qat_train(
        model, variables, data, cfg, jax.random.key(0), progress=False, checkpoint_dir=str(tmp_path)
    )
    np.testing.assert_array_equal(done.history["loss"], full.history["loss"])
    for a, b in zip(jax.tree.leaves(done.variables), jax.tree.leaves(full.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="another config"):
        qat_train(
            model,
            variables,
            data,
            dataclasses.replace(cfg, learning_rate=1e-2),
            jax.random.key(0),
            progress=False,
            checkpoint_dir=str(tmp_path),
        )


def test_nan_loss_stops_with_the_step_and_keeps_last_checkpoint(setup, tmp_path):
    model, variables, _ = setup
    bs = 16
    x, y = _data(n=2 * bs + 1)
    key = jax.random.key(7)
    # The example dropped from epoch 0 (remainder of the permutation) gets a NaN: epoch 0 is
    # clean and checkpointed, epoch 1 hits it.
    perm0 = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), x.shape[0]))
    bad = int(perm0[-1])
    ep1 = batch_indices(x.shape[0], bs, key=key, epoch=1, drop_last=True)
    assert any(bad in b for b in ep1), "pick another key: the bad example is dropped again"
    first_bad = 2 + next(i for i, b in enumerate(ep1) if bad in b)
    x = x.at[bad, 0].set(jnp.nan)
    cfg = QATConfig(weights=W4, epochs=4, batch_size=bs)
    with pytest.raises(QATDivergedError, match=f"step {first_bad}") as err:
        qat_train(model, variables, (x, y), cfg, key, progress=False, checkpoint_dir=str(tmp_path))
    assert err.value.step == first_bad
    assert err.value.checkpoint == str(tmp_path)
    prog = make_qat_program(model, variables, cfg)
    state, meta = load_train_state(qat_checkpoint_path(tmp_path), prog.init(variables, None))
    assert meta["epoch"] == 1 and int(state.step) == 2
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(state.params))


def test_config_validation_names_the_argument():
    cases = [
        (dict(scale_mode="lsq"), "scale_mode"),
        (dict(gradient_at="latent"), "gradient_at"),
        (dict(scale_mode="learned", gradient_at="float"), "learned scales"),
        (dict(range_update_every=-1), "range_update_every"),
        (dict(activation_bits=1), "activation_bits"),
        (dict(epochs=0), "epochs"),
        (dict(optimizer="rmsprop"), "optimizer"),
        (dict(weight_decay=1e-4), "adamw"),
        (dict(min_scale_ratio=0.0), "min_scale_ratio"),
        (dict(learning_rate=-1.0), "learning_rate"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            QATConfig(weights=W4, **kwargs)
    with pytest.raises(ValueError, match="weights"):
        QATConfig(weights="int4")
    with pytest.raises(ValueError, match="nearest"):
        resolve_plan(
            {"params": {"d": {"kernel": jnp.ones((2, 2))}}},
            quant.QuantConfig(bits=4, rounding="floor"),
            targets=None,
        )


def test_batch_larger_than_data_and_bad_data(setup):
    model, variables, (x, y) = setup
    with pytest.raises(ValueError, match="batch_size"):
        qat_train(
            model,
            variables,
            (x, y),
            QATConfig(weights=W4, batch_size=1000),
            jax.random.key(0),
            progress=False,
        )
    with pytest.raises(ValueError, match="labels"):
        qat_train(
            model, variables, (x, y[:5]), QATConfig(weights=W4), jax.random.key(0), progress=False
        )
