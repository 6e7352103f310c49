"""Learned rounding: layer-wise AdaRound and network-wise (boundary-gap) rounding.

Both optimise the AdaRound variables ``V`` of every quantized kernel (see
:mod:`bq_jax.quant.adaround`): the soft weights ``W~(V) = s (clip(floor(W/s) + h(V) + zp,
qmin, qmax) - zp)`` start at ``h(V) = frac(W/s)`` (i.e. at the float weights), the rounding
regulariser ``sum 1 - |2h - 1|^beta`` (beta 20 -> 2 after a 20 % warm start, off during the
warm start) pushes ``h`` to {0, 1}, and the result is hard-rounded (``h = 1{V >= 0}``), so
every returned kernel is on its integer grid (checked before returning).

* :func:`adaround` -- AdaRound (Nagel et al. 2020; white paper section 3.5), layer by layer
  in call order, minimising the layer reconstruction loss
  ``E_x ||W x - W~ x~||^2 + lambda f_reg(V)`` on calibration inputs. ``x`` is the float
  model's input to the layer and ``x~`` the input in the model quantized so far
  (``inputs="quantized"``, default: later layers compensate earlier rounding, the
  "asymmetric reconstruction" of the AdaRound paper) or ``x~ = x`` (``inputs="float"``).
* :func:`optimize_rounding` -- the same ``V`` optimised jointly for the whole network with a
  swappable objective ``objective(soft_params, batch) -> (loss, aux)``; the default one
  combines a task term (KL between float and quantized logits), an optional per-layer
  reconstruction term and the boundary-gap penalty of the boundary-aware quantization paper,
  evaluated on calibration band points and slice grid points.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from bq_jax import geometry, quant
from bq_jax._src.checks import check_choice, check_float, check_int
from bq_jax.models.tracing import LayerProgram, trace, trace_layers
from bq_jax.ptq.checks import check_calibration
from bq_jax.ptq.paths import flatten_params, unflatten_params
from bq_jax.ptq.weights import DEFAULT_TARGETS, resolve_rules
from bq_jax.quant import adaround as ar
from bq_jax.train import NonFiniteLossError, optimizer_update
from bq_jax.vocabulary import DEFAULT_BAND_QUANTILE

__all__ = [
    "AdaRoundConfig",
    "RoundingConfig",
    "adaround",
    "check_on_grid",
    "layer_reconstruction_error",
    "make_rounding_objective",
    "nearest_rounding",
    "optimize_rounding",
    "rounding_batch_data",
]


# ----------------------------------------------------------------------------- helpers


def _freeze_rules(weights):
    if isinstance(weights, quant.QuantConfig):
        return weights
    if isinstance(weights, str | bytes) or not isinstance(weights, Sequence):
        raise TypeError(
            "weights must be a QuantConfig or a sequence of (regex, QuantConfig | None) rules, "
            f"got {type(weights).__name__}"
        )
    return tuple(tuple(r) for r in weights)


@functools.partial(jax.jit, static_argnums=1)
def _full_qparams(w, config) -> quant.QParams:
    """``quant.compute_qparams`` with scale / zero point broadcast to ``w.shape`` (jitted)."""
    return quant.broadcast_qparams(quant.compute_qparams(w, config), tuple(w.shape), config)


def _quantizers(
    params, weights, targets, strict, layouts=None, channel_axis="output"
) -> dict[str, quant.QParams]:
    """The integer grid of every kernel to round: ``QParams`` broadcast to the kernel's shape.

    ``layouts``: ``{kernel_path: output_axis}`` (per-channel axes resolved as in
    ``ptq.quantize_weights``).
    """
    plan = resolve_rules(
        params, weights, targets=targets, strict=strict, layouts=layouts, channel_axis=channel_axis
    )
    if not plan:
        raise ValueError("the rules keep every kernel in float; nothing to round")
    flat = flatten_params(params)
    out = {}
    for path, cfg in plan.items():
        if not cfg.is_int:
            raise ValueError(
                f"learned rounding needs an integer grid; {path!r} has fmt={cfg.fmt!r} "
                "(use fmt='int')"
            )
        qp = _full_qparams(flat[path], cfg)
        out[path] = quant.QParams(
            jnp.asarray(qp.scale, flat[path].dtype), qp.zero_point, int(qp.qmin), int(qp.qmax)
        )
    return out


@jax.jit
def _grid_distance(w, q: quant.QParams):
    c = w / _bcast(q.scale, w) + _bcast(q.zero_point, w)
    r = jnp.round(c)
    return jnp.max(jnp.abs(c - r)), jnp.min(r), jnp.max(r)


def check_on_grid(w, q: quant.QParams, *, path: str = "kernel", atol: float = 1e-3) -> None:
    """Raises ``RuntimeError`` unless ``w / s + zp`` is an integer in ``[qmin, qmax]``.

    ``q``: the grid (``scale`` and ``zero_point`` broadcasting against ``w`` after left
    padding with unit axes; integer ``qmin``, ``qmax``).

    Example:
      >>> check_on_grid(jnp.array([0.5, -1.0]), quant.QParams(0.5, 0, -8, 7))
    """
    w = jnp.asarray(w)
    off, lo, hi = (float(a) for a in _grid_distance(w, q))
    if not (off <= atol and lo >= q.qmin and hi <= q.qmax):
        raise RuntimeError(
            f"{path}: rounded weights are off the integer grid (max distance {off:.3g}, codes in "
            f"[{lo}, {hi}] vs [{q.qmin}, {q.qmax}])"
        )


def nearest_rounding(
    params, weights, *, targets=DEFAULT_TARGETS, strict=False, layouts=None, channel_axis="output"
):
    """Round-to-nearest on the same grids that :func:`adaround` uses (the baseline).

    ``W~ = s (clip(round(W/s) + zp, qmin, qmax) - zp)``, round half to even. ``layouts`` and
    ``channel_axis`` as in ``ptq.quantize_weights`` (``adapt(...).layouts`` for kernels that
    are not ``(in, out)``; :func:`adaround` finds them itself).

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> w4 = quant.QuantConfig(bits=4)
      >>> k = nearest_rounding(variables, w4)["params"]["layers_0"]["kernel"]
      >>> bool(jnp.all(k == quant.fake_quant(variables["params"]["layers_0"]["kernel"], w4)))
      True
    """
    qs = _quantizers(params, _freeze_rules(weights), targets, strict, layouts, channel_axis)
    flat = flatten_params(params)
    for path, q in qs.items():
        flat[path] = _nearest(flat[path], q)
    return unflatten_params(flat)


@jax.jit
def _nearest(w, q: quant.QParams):
    return quant.int_fake_quant(
        w, _bcast(q.scale, w), _bcast(q.zero_point, w), qmin=q.qmin, qmax=q.qmax
    )


@functools.partial(jax.jit, static_argnums=(2, 3))
def _rounding_start(w, q: quant.QParams, zeta, gamma):
    """``(w_mid, V0)``: ``w_mid = s (floor(W/s) + 1/2)`` and ``V0`` with ``h(V0) = frac(W/s)``.

    The learned-rounding kernels are computed from ``w_mid`` instead of ``W``: XLA may compute
    ``W/s`` one ulp away from eager (or another program's) division, so ``floor(W/s)`` of a
    weight on a grid point (every channel's absmax weight sits on ``qmax``) can come out one
    code lower inside a jitted step than where ``V0`` was computed; ``w_mid / s`` is half a
    code away from any integer, so every program agrees on its floor, and
    ``s (floor(w_mid/s) + h(V0)) = W`` as intended.
    """
    x = w / _bcast(q.scale, w)
    base = jnp.floor(x)
    w_mid = _bcast(q.scale, w) * (base + 0.5)
    v0 = ar.adaround_init(x - base, jnp.ones((), w.dtype), zeta=zeta, gamma=gamma)
    return w_mid, v0


# h(V0) of a rounding variable initialised from a given code: 1 - margin (round up) or margin
# (round down). Not 0 / 1 exactly: there h saturates and V would get no gradient.
_INIT_H_MARGIN = 0.01


@functools.partial(jax.jit, static_argnums=(3, 4))
def _rounding_start_from(w, w_init, q: quant.QParams, zeta, gamma):
    """``(V0, reachable)``: ``V0`` whose hard rounding gives the codes of ``w_init``.

    ``h(V0)`` is ``1 - _INIT_H_MARGIN`` where the code of ``w_init`` is ``floor(W/s) + 1``
    (after clipping to the code range) and ``_INIT_H_MARGIN`` where it is ``floor(W/s)``;
    ``reachable`` is False if some code is neither (not a rounding of ``W``).
    """
    s = _bcast(q.scale, w)
    zp = _bcast(q.zero_point, w)
    base = jnp.floor(w / s)
    code = jnp.round(w_init / s + zp)
    down = jnp.clip(base + zp, q.qmin, q.qmax)
    up = jnp.clip(base + 1 + zp, q.qmin, q.qmax)
    h = jnp.where(code == down, _INIT_H_MARGIN, 1.0 - _INIT_H_MARGIN).astype(w.dtype)
    v0 = ar.adaround_init(h, jnp.ones((), w.dtype), zeta=zeta, gamma=gamma)
    return v0, jnp.all((code == down) | (code == up))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _finish(w, v, q, zeta, gamma):
    """``(h(V), hard-rounded kernel)``."""
    h = ar.adaround_h(v, zeta=zeta, gamma=gamma)
    return h, ar.adaround_weights(
        w, v, q.scale, q.zero_point, qmin=q.qmin, qmax=q.qmax, hard=True, zeta=zeta, gamma=gamma
    )


def _bcast(a, w):
    a = jnp.asarray(a, w.dtype)
    return a.reshape((1,) * (w.ndim - a.ndim) + a.shape)


def _soft_kernel(w, v, q: quant.QParams, cfg, *, hard=False):
    return ar.adaround_weights(
        w,
        v,
        q.scale,
        q.zero_point,
        qmin=q.qmin,
        qmax=q.qmax,
        hard=hard,
        zeta=cfg.zeta,
        gamma=cfg.gamma,
    )


def _reg_term(vs: Mapping[str, Any], step, total, cfg):
    beta = ar.beta_schedule(
        step, total, warm_start=cfg.warm_start, beta_start=cfg.beta_start, beta_end=cfg.beta_end
    )
    active = ar.regularizer_active(step, total, warm_start=cfg.warm_start)
    reg = sum(ar.adaround_regularizer(v, beta, zeta=cfg.zeta, gamma=cfg.gamma) for v in vs.values())
    return active * reg, beta


def _set(cfg, name: str, value) -> None:
    object.__setattr__(cfg, name, value)


_POSITIVE = {"low": 0.0, "open_low": True}
_NON_NEGATIVE = {"low": 0.0}


def _check_floats(cfg, **bounds) -> None:
    """Checks (``_src.checks.check_float``) and stores each named float field of ``cfg``."""
    for name, b in bounds.items():
        _set(cfg, name, check_float(name, getattr(cfg, name), **b))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LearnedRounding:
    """Settings shared by :class:`AdaRoundConfig` and :class:`RoundingConfig` (AdaRound's
    optimisation of the rounding variables ``V``; defaults: AdaRound paper / DESIGN.md)."""

    # Weight quantizer: one QuantConfig for every kernel, or ordered (regex, QuantConfig|None)
    # rules as in ptq.quantize_weights; only fmt="int" grids can be rounded.
    weights: Any
    # Optimisation steps (AdaRound paper: 10k per layer at batch 32).
    rounding_iters: int = 10_000
    # Calibration examples per step (sampled with replacement).
    batch_size: int = 32
    # Adam learning rate on V.
    learning_rate: float = 1e-3
    # lambda: weight of the rounding regulariser.
    reg_weight: float = 0.01
    # Fraction of steps without regulariser at the start.
    warm_start: float = 0.2
    # Regulariser exponent beta, annealed linearly from beta_start to beta_end after warm start.
    beta_start: float = 20.0
    beta_end: float = 2.0
    # Rectified-sigmoid stretch (zeta > 1, gamma < 0).
    zeta: float = 1.1
    gamma: float = -0.1
    # Candidate leaves and rule strictness, as in ptq.quantize_weights.
    targets: str | None = DEFAULT_TARGETS
    strict: bool = False
    # Optimisation steps per jitted call (scan length); only affects speed and progress.
    steps_per_call: int = 250

    def __post_init__(self):
        _set(self, "weights", _freeze_rules(self.weights))
        for name in ("rounding_iters", "batch_size", "steps_per_call"):
            _set(self, name, check_int(name, getattr(self, name), 1))
        _check_floats(
            self,
            learning_rate=_POSITIVE,
            reg_weight=_NON_NEGATIVE,
            warm_start={"low": 0.0, "high": 1.0, "open_high": True},
            beta_start=_POSITIVE,
            beta_end=_POSITIVE,
            zeta={"low": 1.0, "open_low": True},
            gamma={"high": 0.0, "open_high": True},
        )
        if not isinstance(self.strict, bool):
            raise TypeError(f"strict must be a bool, got {self.strict!r}")


# ----------------------------------------------------------------------------- AdaRound


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaRoundConfig(_LearnedRounding):
    """Layer-wise AdaRound settings (defaults: AdaRound paper / DESIGN.md).

    ``rounding_iters`` steps per layer, ``reg_weight`` is lambda of the layer loss
    ``E||W x - W~ x~||^2 + lambda f_reg(V)``; the other shared fields are documented in the
    source of the base class (learning rate, beta schedule, stretch, targets, ...).

    Example:
      >>> AdaRoundConfig(weights=quant.QuantConfig(bits=4), rounding_iters=2000).rounding_iters
      2000
    """

    # Layer inputs: "quantized" (from the model quantized so far) or "float".
    inputs: str = "quantized"

    def __post_init__(self):
        super().__post_init__()
        check_choice("inputs", self.inputs, ("quantized", "float"))


@functools.lru_cache(maxsize=32)
def _io_fn(apply_fn):
    def io(params, x):
        _, calls = trace_layers(apply_fn, params, x)
        return {c.name: (c.inputs, c.outputs) for c in calls}

    return jax.jit(io)


def _check_batch_leading(name, x_in, y_t, n, site, step_trace) -> None:
    """AdaRound samples rows of the recorded layer input / output: the batch must lead."""
    a_in, a_out = step_trace.aval[site.operand], step_trace.aval[site.output]
    ok = (
        x_in.shape[0] == n
        and y_t.shape[0] == n
        and tuple(a_in.shape[1:]) == tuple(x_in.shape[1:])
        and tuple(a_out.shape[1:]) == tuple(y_t.shape[1:])
    )
    if not ok:
        raise ValueError(
            f"layer {name!r}: its input {tuple(x_in.shape)} / output {tuple(y_t.shape)} on {n} "
            f"examples do not keep the batch on the leading axis (at the step batch size they "
            f"are {tuple(a_in.shape)} / {tuple(a_out.shape)}); layer-wise AdaRound samples "
            "examples along that axis"
        )


def _sq_err(y, t):
    d = (y - t).reshape(y.shape[0], -1)
    return jnp.mean(jnp.sum(d * d, axis=1))


@functools.lru_cache(maxsize=128)
def _layer_runner(
    program: LayerProgram, kernel: str, qmin: int, qmax: int, hyper: tuple, total: int
):
    """Jitted ``lax.scan`` over AdaRound steps for one layer computation; cached across calls.

    ``hyper`` = (learning_rate, reg_weight, warm_start, beta_start, beta_end, zeta, gamma,
    batch_size). Returns ``(optimizer, run, traces)`` where ``traces`` counts compilations.
    """
    lr, reg_weight, warm_start, beta_start, beta_end, zeta, gamma, batch_size = hyper
    sched = _Schedule(warm_start, beta_start, beta_end, zeta, gamma)
    opt = optax.adam(lr)
    traces: list[int] = []

    def loss_fn(v, w, scale, zp, fixed, xb, yb, step):
        q = quant.QParams(scale, zp, qmin, qmax)
        wq = _soft_kernel(w, v, q, sched)
        y = program(xb, {**fixed, kernel: wq})
        rec = _sq_err(y, yb)
        reg, _ = _reg_term({"v": v}, step, total, sched)
        return rec + reg_weight * reg, (rec, reg)

    def one(carry, step, w, scale, zp, fixed, x_in, y_t, key):
        v, st = carry
        idx = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, x_in.shape[0])
        (loss, (rec, reg)), g = jax.value_and_grad(loss_fn, has_aux=True)(
            v, w, scale, zp, fixed, x_in[idx], y_t[idx], step
        )
        return optimizer_update(opt, g, st, v), (loss, rec, reg)

    return opt, _StepRunner(one, traces), traces


class _StepRunner:
    """Runs ``one(carry, step, *consts) -> (carry, metrics)`` over a chunk of steps, jitted.

    The chunk is one ``lax.scan`` unless the step contains a convolution and runs on CPU:
    there XLA compiles the kernel-gradient convolution inside a while loop (the scan) to a
    naive loop instead of its fast convolution routine -- ~14 s instead of ~0.3 s per step on
    the CIFAR ResNet on 2 cores -- so the chunk is a Python loop over one jitted step instead
    (same step function, same results up to float reassociation). ``traces`` counts
    compilations.
    """

    def __init__(self, one: Callable, traces: list):
        self._one = one
        self._traces = traces
        self._scan = jax.jit(self._run_scan)
        self._step = jax.jit(self._run_step)

    def _run_scan(self, carry, consts, steps):
        self._traces.append(1)  # runs at trace time only: counts compilations, not calls
        return jax.lax.scan(lambda c, s: self._one(c, s, *consts), carry, steps)

    def _run_step(self, carry, consts, step):
        self._traces.append(1)
        return self._one(carry, step, *consts)

    def loops_steps(self, carry, consts, step) -> bool:
        """Whether chunks run as a Python loop of jitted steps (see the class docstring)."""
        if jax.default_backend() != "cpu":
            return False
        jaxpr = jax.make_jaxpr(self._one)(carry, step, *consts)
        return "conv_general_dilated" in str(jaxpr)

    def __call__(self, carry, consts, steps, *, loop_steps: bool):
        if not loop_steps:
            return self._scan(carry, consts, steps)
        history = []
        for step in steps:
            carry, metrics = self._step(carry, consts, step)
            history.append(metrics)
        return carry, jax.tree.map(lambda *m: jnp.stack(m), *history)


@dataclasses.dataclass(frozen=True)
class _Schedule:
    warm_start: float
    beta_start: float
    beta_end: float
    zeta: float
    gamma: float


def _chunks(total: int, size: int):
    start = 0
    while start < total:
        stop = min(start + size, total)
        yield jnp.arange(start, stop, dtype=jnp.int32)
        start = stop


def _stop_if_not_finite(losses, steps, what: str) -> None:
    """Raises :class:`NonFiniteLossError` at the first NaN / inf loss of a chunk of steps.

    A non-finite loss makes every later gradient NaN, and the hard rounding ``V >= 0`` of NaN
    is floor rounding: the result would look plausible while being all rounded down.
    """
    losses = np.asarray(losses)
    bad = ~np.isfinite(losses)
    if bad.any():
        i = int(np.argmax(bad))
        step = int(np.asarray(steps)[i])
        raise NonFiniteLossError(
            f"{what}: the loss is {losses[i]} at step {step} (0-based); stopped instead of "
            "returning floor rounding. Check the calibration inputs and the objective for "
            "NaN / inf",
            step=step,
        )


def adaround(
    apply_fn: Callable,
    params,
    calibration_x,
    config: AdaRoundConfig,
    key: jax.Array,
    *,
    progress: bool = True,
    return_info: bool = False,
):
    """AdaRound, layer by layer, as an optax loop (Nagel et al. 2020; white paper 3.5).

    For each quantized Dense/Conv layer in call order, minimises over ``V``

        E_batch ||y(W, x) - y(W~(V), x~)||^2 + lambda * active(t) * f_reg(V, beta(t))

    with Adam, where ``y`` is the layer's pre-activation output (bias included), the squared
    norm is summed over the output features and averaged over the batch, ``x`` is the layer
    input in the float model and ``x~`` the one in the model quantized so far
    (``config.inputs``). Scale and zero point come from ``quant.compute_qparams`` of the
    float kernel and stay fixed. The jitted step (a ``lax.scan`` over
    ``config.steps_per_call`` steps) is compiled once per layer. At the end ``h = 1{V >= 0}``
    and the kernel is checked to lie on its grid.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` (any model; ``bq_jax.models.adapt``).
      params: float variables dict.
      calibration_x: calibration inputs (never held-out data); whole set kept in memory.
      config: :class:`AdaRoundConfig`.
      key: PRNG key for batch sampling (``fold_in(key, layer)``, then ``fold_in(., step)``).
      progress: show a tqdm bar per layer.
      return_info: also return ``{layer: {"loss", "reconstruction_loss", "reg": per-step arrays,
        "soft_fraction": fraction of h not in {0, 1} before hard rounding, "traces": int}}``.

    Returns:
      Variables dict with hard-rounded kernels (same structure); plus info if requested.

    Raises:
      ValueError: empty calibration set, a quantized leaf that is not the kernel of a called
        Dense/Conv layer, a non-integer grid, or the rule errors of ``quantize_weights``.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> w4 = quant.QuantConfig(bits=4, granularity="per_channel")
      >>> cfg = AdaRoundConfig(weights=w4, rounding_iters=200, steps_per_call=100)
      >>> params_ar = adaround(model.apply, variables, x, cfg, jax.random.key(0), progress=False)
      >>> params_rtn = nearest_rounding(variables, w4)
      >>> err_ar = layer_reconstruction_error(model.apply, variables, params_ar, x)
      >>> err_rtn = layer_reconstruction_error(model.apply, variables, params_rtn, x)
      >>> err_ar["layers_2"] < err_rtn["layers_2"]
      True
    """
    if not isinstance(config, AdaRoundConfig):
        raise TypeError(f"config must be an AdaRoundConfig, got {type(config).__name__}")
    x = check_calibration(calibration_x)
    sites = trace(apply_fn, params, x[:1]).layers()
    layouts = {s.layer.kernel_path: s.layer.output_axis for s in sites}
    qs = _quantizers(params, config.weights, config.targets, config.strict, layouts)
    by_path = {s.layer.kernel_path: s for s in sites}
    stray = [p for p in qs if p not in by_path]
    if stray:
        raise ValueError(
            f"{stray} are not kernels of layers called by apply_fn "
            f"({[s.name for s in sites]}); AdaRound needs each quantized leaf's layer"
        )
    layers = [s for s in sites if s.layer.kernel_path in qs]
    # The layer programs are traced at the step's batch size (reshapes may carry it).
    step_x = jax.ShapeDtypeStruct((config.batch_size, *x.shape[1:]), x.dtype)
    step_trace = trace(apply_fn, params, step_x)
    io = _io_fn(apply_fn)
    float_io = io(params, x)
    flat = flatten_params(params)
    info = {}
    for li, layer in enumerate(layers):
        path = layer.layer.kernel_path
        q, w = qs[path], flat[path]
        if config.inputs == "quantized" and li > 0:
            x_in = io(unflatten_params(flat), x)[layer.name][0]
        else:
            x_in = float_io[layer.name][0]
        y_t = float_io[layer.name][1]
        program = step_trace.program(step_trace.site(path))
        _check_batch_leading(layer.name, x_in, y_t, x.shape[0], step_trace.site(path), step_trace)
        fixed = {p: flat[p] for p in program.leaves if p != path}
        hyper = (
            config.learning_rate,
            config.reg_weight,
            config.warm_start,
            config.beta_start,
            config.beta_end,
            config.zeta,
            config.gamma,
            config.batch_size,
        )
        opt, run, traces = _layer_runner(
            program, path, q.qmin, q.qmax, hyper, config.rounding_iters
        )
        traces_before = len(traces)
        w, v = _rounding_start(w, q, config.zeta, config.gamma)
        state = opt.init(v)
        lkey = jax.random.fold_in(key, li)
        hist = []
        bar = tqdm(
            total=config.rounding_iters,
            desc=f"adaround {layer.name}",
            disable=not progress,
            leave=False,
        )
        consts = (w, q.scale, q.zero_point, fixed, x_in, y_t, lkey)
        loop_steps = run.loops_steps((v, state), consts, jnp.int32(0))
        for steps in _chunks(config.rounding_iters, config.steps_per_call):
            (v, state), metrics = run((v, state), consts, steps, loop_steps=loop_steps)
            _stop_if_not_finite(metrics[0], steps, f"adaround of layer {layer.name!r} ({path})")
            hist.append(metrics)
            bar.update(int(steps.shape[0]))
            bar.set_postfix(rec=f"{float(metrics[1][-1]):.4g}")
        bar.close()
        h, w_hard = _finish(w, v, q, config.zeta, config.gamma)
        check_on_grid(w_hard, q, path=path)
        flat[path] = w_hard
        loss, rec, reg = (jnp.concatenate([m[i] for m in hist]) for i in range(3))
        info[layer.name] = {
            "loss": loss,
            "reconstruction_loss": rec,
            "reg": reg,
            "soft_fraction": float(jnp.mean((h > 0) & (h < 1))),
            "traces": len(traces) - traces_before,
        }
    out = unflatten_params(flat)
    return (out, info) if return_info else out


def layer_reconstruction_error(
    apply_fn: Callable, params_float, params_quant, x, *, inputs: str = "quantized"
) -> dict[str, float]:
    """Relative layer reconstruction error ``E||y - y~||^2 / E||y||^2`` of every Dense/Conv.

    ``y`` is the float layer output on float inputs; ``y~`` the quantized layer's output on
    the quantized model's own inputs (``inputs="quantized"``, end-to-end) or on the float
    inputs (``inputs="float"``, the layer in isolation).

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> params_q = nearest_rounding(variables, quant.QuantConfig(bits=4))
      >>> errors = layer_reconstruction_error(model.apply, variables, params_q, x)
      >>> sorted(errors), all(0 < e < 1 for e in errors.values())
      (['layers_0', 'layers_2'], True)
    """
    x = check_calibration(x)
    if inputs not in ("quantized", "float"):
        raise ValueError(f"inputs must be 'quantized' or 'float', got {inputs!r}")
    io = _io_fn(apply_fn)
    f = io(params_float, x)
    if inputs == "quantized":
        qio = io(params_quant, x)
        yq = {n: qio[n][1] for n in f}
    else:
        t = trace(apply_fn, params_float, x)
        flat = flatten_params(params_quant)
        yq = {}
        for site in t.layers():
            program = t.program(site)
            yq[site.name] = program(f[site.name][0], {p: flat[p] for p in program.leaves})
    return {
        n: float(_sq_err(yq[n], f[n][1]) / jnp.maximum(_sq_err(f[n][1], 0 * f[n][1]), 1e-30))
        for n in f
    }


# ----------------------------------------------------------------------------- network-wise


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoundingConfig(_LearnedRounding):
    """Network-wise learned rounding (boundary-gap rounding when ``boundary_gap_weight > 0``).

    ``rounding_iters`` steps for all layers jointly; the fields shared with
    :class:`AdaRoundConfig` (learning rate, beta schedule, stretch, targets, ...) have the same
    meaning, the others are documented field by field in the source.

    Example:
      >>> cfg = RoundingConfig(weights=quant.QuantConfig(bits=4), boundary_gap_weight=1.0)
      >>> cfg.band_quantile, cfg.resolution
      (0.1, 32)
    """

    # Calibration examples per step for the task / reconstruction terms.
    batch_size: int = 64
    # Band + slice-grid points per step for the boundary-gap term (each set).
    gap_batch_size: int = 128
    # lambda_reg: weight of the rounding regulariser, here the MEAN over all rounded weights
    # of 1 - |2h - 1|^beta (size-independent; AdaRound's layer loss uses the sum). 1.0 leaves
    # ~2 % of h undecided after 10k steps on the digits MLP (0.1 leaves ~10 %).
    reg_weight: float = 1.0
    # Task term: "kl" (KL(float || quantized) of softmax logits), "mse" (logit MSE) or "none".
    task: str = "kl"
    task_weight: float = 1.0
    # Weight of the per-layer reconstruction term (mean over layers of the relative error).
    recon_weight: float = 1.0
    # lambda_gap: weight of the boundary-gap penalty (0 disables it).
    boundary_gap_weight: float = 0.0
    # T: temperature of the boundary-gap weights w = exp(-|g_F| / T).
    temperature: float = 1.0
    # Where the gap penalty is evaluated: "band", "grid" or "both".
    gap_points: str = "both"
    # Calibration band: points whose float margin is at most this quantile of the margins.
    band_quantile: float = DEFAULT_BAND_QUANTILE
    # Resolution R of the R x R grid of the calibration PCA slice.
    resolution: int = 32
    # Forward pass of the objective: False evaluates it on the soft kernels W~(V) (AdaRound's
    # relaxation); True on the hard-rounded kernels (h = 1{V >= 0}) with the soft kernels'
    # gradient (straight-through), so the objective scores the network that is returned.
    # The relaxation lets a term that only asks to match the float model (the boundary-gap
    # penalty above all) be met by fractional h that hard rounding then undoes.
    straight_through: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.straight_through, bool):
            raise TypeError(f"straight_through must be a bool, got {self.straight_through!r}")
        check_choice("task", self.task, ("kl", "mse", "none"))
        check_choice("gap_points", self.gap_points, ("band", "grid", "both"))
        _check_floats(
            self,
            task_weight=_NON_NEGATIVE,
            recon_weight=_NON_NEGATIVE,
            boundary_gap_weight=_NON_NEGATIVE,
            temperature=_POSITIVE,
            band_quantile={"low": 0.0, "high": 1.0, "open_low": True},
        )
        _set(self, "resolution", check_int("resolution", self.resolution, 2))
        _set(self, "gap_batch_size", check_int("gap_batch_size", self.gap_batch_size, 1))
        if self.task == "none" and self.recon_weight == 0 and self.boundary_gap_weight == 0:
            raise ValueError(
                "the objective is empty: task='none', recon_weight=0, boundary_gap_weight=0"
            )


def _init_from(w_mid, flat_init, qs: Mapping[str, quant.QParams], config) -> dict:
    """Rounding variables that reproduce the kernels of ``init_params`` (see optimize_rounding).

    ``w_mid``: the kernels of :func:`_rounding_start` (``floor`` agrees across programs).
    """
    flat = w_mid
    v0 = {}
    for p, q in qs.items():
        if p not in flat_init:
            raise ValueError(f"init_params has no {p!r}; it must hold every quantized kernel")
        w_init = jnp.asarray(flat_init[p], flat[p].dtype)
        if w_init.shape != flat[p].shape:
            raise ValueError(
                f"init_params[{p!r}] has shape {w_init.shape}, params has {flat[p].shape}"
            )
        try:
            check_on_grid(w_init, q, path=p)
        except RuntimeError as e:
            raise ValueError(
                f"init_params must hold kernels on the grids of config.weights: {e}"
            ) from None
        v0[p], reachable = _rounding_start_from(flat[p], w_init, q, config.zeta, config.gamma)
        if not bool(reachable):
            raise ValueError(
                f"init_params[{p!r}] is on the grid but some codes are neither floor(W/s) nor "
                "floor(W/s) + 1 of params' kernel; only roundings of params can be a start"
            )
    return v0


def rounding_batch_data(apply_fn: Callable, params, calibration_x, config: RoundingConfig) -> dict:
    """Calibration pools the rounding objective samples from (float logits precomputed).

    Keys: ``x`` / ``logits`` (calibration inputs and float logits), ``band_x`` /
    ``band_logits`` (calibration points whose float margin ``z_a - z_b`` is at most the
    ``band_quantile`` quantile of calibration margins), ``grid_x`` / ``grid_logits`` (the
    ``R x R`` grid of the PCA slice of the calibration inputs, ``geometry.pca_slice``).

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> cfg = RoundingConfig(weights=quant.QuantConfig(bits=4), resolution=8)
      >>> pools = rounding_batch_data(model.apply, variables, x, cfg)
      >>> pools["grid_x"].shape, pools["grid_logits"].shape
      ((64, 4), (64, 3))
    """
    x = check_calibration(calibration_x)
    run = jax.jit(apply_fn)
    logits = run(params, x)
    margin = geometry.pair_gap(logits, *geometry.top2(logits))
    tau = geometry.band_threshold(margin, quantile=config.band_quantile)
    band = np.asarray(margin <= tau)
    slc = geometry.pca_slice(x, resolution=config.resolution)
    grid_x = slc.points(flat=False).reshape((-1,) + x.shape[1:])
    return {
        "x": x,
        "logits": logits,
        "band_x": x[band],
        "band_logits": logits[band],
        "grid_x": grid_x,
        "grid_logits": run(params, grid_x),
    }


def make_rounding_objective(
    apply_fn: Callable, params_float, config: RoundingConfig
) -> Callable[[Any, Mapping[str, Any]], tuple[jax.Array, dict]]:
    """The default rounding objective ``objective(soft_params, batch) -> (loss, aux)``.

    ``loss = task_weight * T(z_Q, z_F) + recon_weight * R + boundary_gap_weight * G`` with

    * ``T``: ``KL(softmax z_F || softmax z_Q)`` (or logit MSE) on ``batch["x"]``;
    * ``R``: mean over Dense/Conv layers of ``E||y_l - y~_l||^2 / E||y_l||^2`` on ``batch["x"]``;
    * ``G``: ``geometry.boundary_gap_penalty`` with ``reduction="weighted_mean"`` --
      ``sum_x w(x) huber(g_Q(x) - g_F(x)) / sum_x w(x)``, ``g = z_a - z_b`` (float top-1 /
      runner-up), ``w = exp(-|g_F| / T)`` (boundary-aware quantization paper) -- on
      ``batch["band_x"]`` and/or ``batch["grid_x"]``. The weighted mean keeps ``G`` on the
      scale of one near-boundary point's Huber term: on the digits MLP at 4 bits, ``G`` of
      the hard-rounded network is ~2 for round-to-nearest and ~0.2 for AdaRound, against a
      KL term of ~3e-2 and ~4e-3, while soft kernels drive ``G`` below 1e-5 with fractional
      ``h`` (use ``straight_through=True`` with the gap term).

    ``aux`` holds each term: ``"task"``, ``"reconstruction_error"`` (``R``) and
    ``"boundary_gap_penalty"`` (``G``), those with a non-zero weight. The rounding
    regulariser is added by :func:`optimize_rounding`.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> cfg = RoundingConfig(weights=quant.QuantConfig(bits=4), boundary_gap_weight=1.0)
      >>> objective = make_rounding_objective(model.apply, variables, cfg)
      >>> loss, aux = objective(variables, rounding_batch_data(model.apply, variables, x, cfg))
      >>> sorted(aux), round(float(loss), 6)  # the float model scores 0
      (['boundary_gap_penalty', 'reconstruction_error', 'task'], 0.0)
    """
    io = None
    if config.recon_weight > 0:

        def io(params, xb):
            _, calls = trace_layers(apply_fn, params, xb)
            return {c.name: c.outputs for c in calls}

    def objective(soft_params, batch):
        aux = {}
        loss = jnp.float32(0.0)
        if config.task != "none":
            zq = apply_fn(soft_params, batch["x"])
            zf = batch["logits"]
            if config.task == "kl":
                pf = jax.nn.log_softmax(zf, axis=-1)
                pq = jax.nn.log_softmax(zq, axis=-1)
                t = jnp.mean(jnp.sum(jnp.exp(pf) * (pf - pq), axis=-1))
            else:
                t = jnp.mean(jnp.sum((zq - zf) ** 2, axis=-1))
            aux["task"] = t
            loss = loss + config.task_weight * t
        if io is not None:
            yq, yf = io(soft_params, batch["x"]), io(params_float, batch["x"])
            r = jnp.mean(
                jnp.stack(
                    [
                        _sq_err(yq[n], yf[n]) / jnp.maximum(_sq_err(yf[n], 0 * yf[n]), 1e-12)
                        for n in yf
                    ]
                )
            )
            aux["reconstruction_error"] = r
            loss = loss + config.recon_weight * r
        if config.boundary_gap_weight > 0:
            keys = {"band": ("band",), "grid": ("grid",), "both": ("band", "grid")}
            pts = [batch[f"{k}_x"] for k in keys[config.gap_points]]
            zfs = [batch[f"{k}_logits"] for k in keys[config.gap_points]]
            zq = apply_fn(soft_params, jnp.concatenate(pts))
            g = geometry.boundary_gap_penalty(
                zq,
                jnp.concatenate(zfs),
                temperature=config.temperature,
                reduction="weighted_mean",
            )
            aux["boundary_gap_penalty"] = g
            loss = loss + config.boundary_gap_weight * g
        return loss, aux

    return objective


def optimize_rounding(
    apply_fn: Callable,
    params,
    calibration_x,
    config: RoundingConfig,
    key: jax.Array,
    *,
    objective: Callable | None = None,
    init_params=None,
    progress: bool = True,
    return_info: bool = False,
):
    """Network-wise learned rounding of every quantized kernel, with a swappable objective.

    Optimises all AdaRound variables ``V`` jointly with Adam on

        objective(soft_params(V), batch)[0] + reg_weight * active(t) * mean f_reg(V, beta(t))

    where ``soft_params(V)`` is ``params`` with every quantized kernel replaced by its soft
    AdaRound weight ``W~`` (with ``config.straight_through``, by
    ``W~ + stop_gradient(W~_hard - W~)``: hard-rounded values, the soft kernel's gradient),
    and ``batch`` is sampled each step (``fold_in(key, step)``) from the pools of
    :func:`rounding_batch_data`: ``batch["x"], batch["logits"]`` (``batch_size`` calibration
    points and their float logits), ``batch["band_x"], batch["band_logits"]``
    and ``batch["grid_x"], batch["grid_logits"]`` (``gap_batch_size`` each). Default
    objective: :func:`make_rounding_objective` (KL task term + boundary-gap penalty with
    weight ``boundary_gap_weight`` and temperature ``temperature``). The result is hard-rounded and
    checked to lie on the grid.

    Write your own rounding objective: any pure function of the soft params and the batch
    that returns a scalar loss and a dict of scalars works (it is jitted and differentiated
    with respect to ``V`` through the soft kernels; with ``straight_through=True`` it sees
    the hard-rounded values)::

        def margin_objective(soft_params, batch):
            zq = apply_fn(soft_params, batch["band_x"])
            zf = batch["band_logits"]
            a = jnp.argmax(zf, axis=-1)[:, None]
            mq = jnp.take_along_axis(zq, a, -1)[:, 0] - jnp.max(
                jnp.where(jax.nn.one_hot(a[:, 0], zq.shape[-1]) > 0, -jnp.inf, zq), -1)
            loss = jnp.mean(jax.nn.relu(0.5 - mq))      # keep band points 0.5 inside
            return loss, {"hinge": loss}

        params_q = optimize_rounding(apply_fn, variables, x_cal, cfg, key,
                                     objective=margin_objective)

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` (any model; ``bq_jax.models.adapt``).
      params: float variables dict.
      calibration_x: calibration inputs (never held-out data).
      config: :class:`RoundingConfig`.
      key: PRNG key.
      objective: ``objective(soft_params, batch) -> (loss, aux)``; default
        ``make_rounding_objective(apply_fn, params, config)``.
      init_params: optional variables dict to start from (e.g. the result of
        :func:`adaround` on the same grids): every quantized kernel must lie on its grid and
        round ``params``' kernel down or up (clipped to the code range); ``V`` starts with
        ``h = 0.99`` where it rounds up and ``0.01`` where it rounds down, so the hard
        rounding before any step is ``init_params`` and the soft kernels are within 0.01
        of a code of it. Default: ``h(V) = frac(W/s)`` (the float weights).
      progress: tqdm progress bar.
      return_info: also return ``{"loss", "reg", <aux keys>: per-step arrays,
        "soft_fraction": fraction of h not in {0,1} before hard rounding, "traces": int}``.

    Returns:
      Variables dict with hard-rounded kernels (plus info if requested).

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> cfg = RoundingConfig(weights=quant.QuantConfig(bits=4, granularity="per_channel"),
      ...                      boundary_gap_weight=30.0, temperature=1.0, rounding_iters=100,
      ...                      steps_per_call=100, resolution=8)
      >>> params_bg = optimize_rounding(model.apply, variables, x, cfg, jax.random.key(0),
      ...                               progress=False)
      >>> params_bg["params"]["layers_0"]["kernel"].shape  # on the 4-bit grid (checked)
      (4, 8)
    """
    if not isinstance(config, RoundingConfig):
        raise TypeError(f"config must be a RoundingConfig, got {type(config).__name__}")
    x = check_calibration(calibration_x)
    sites = trace(apply_fn, params, x[:1]).sites
    layouts = {s.layer.kernel_path: s.layer.output_axis for s in sites} or None
    qs = _quantizers(params, config.weights, config.targets, config.strict, layouts)
    if objective is None:
        objective = make_rounding_objective(apply_fn, params, config)
    elif not callable(objective):
        raise TypeError(f"objective must be callable, got {type(objective).__name__}")
    pools = rounding_batch_data(apply_fn, params, x, config)
    if pools["band_x"].shape[0] == 0:
        raise ValueError("the calibration band is empty; raise band_quantile")
    flat = flatten_params(params)
    start = {p: _rounding_start(flat[p], qs[p], config.zeta, config.gamma) for p in qs}
    w = {p: start[p][0] for p in qs}
    v0 = {p: start[p][1] for p in qs}
    if init_params is not None:
        v0 = _init_from(w, flatten_params(init_params), qs, config)
    n_weights = sum(int(np.prod(a.shape)) for a in w.values())
    opt = optax.adam(config.learning_rate)
    traces: list[int] = []
    total = config.rounding_iters

    base = {p: a for p, a in flat.items() if p not in qs}

    def soft_params(vs, w, base):
        f = dict(base)
        for p in qs:
            f[p] = _soft_kernel(w[p], vs[p], qs[p], config)
            if config.straight_through:
                hard = _soft_kernel(w[p], vs[p], qs[p], config, hard=True)
                f[p] = f[p] + jax.lax.stop_gradient(hard - f[p])
        return unflatten_params(f)

    def sample(pools, key):
        out = {}
        for name, size in (
            ("x", config.batch_size),
            ("band_x", config.gap_batch_size),
            ("grid_x", config.gap_batch_size),
        ):
            n = pools[name].shape[0]
            idx = jax.random.randint(jax.random.fold_in(key, len(out)), (size,), 0, n)
            logit_key = "logits" if name == "x" else name.replace("_x", "_logits")
            out[name] = pools[name][idx]
            out[logit_key] = pools[logit_key][idx]
        return out

    def loss_fn(vs, w, base, batch, step):
        loss, aux = objective(soft_params(vs, w, base), batch)
        reg, beta = _reg_term(vs, step, total, config)
        reg = reg / n_weights
        return loss + config.reg_weight * reg, (aux, reg)

    def one(carry, step, w, base, pools, key):
        vs, st = carry
        batch = sample(pools, jax.random.fold_in(key, step))
        (loss, (aux, reg)), g = jax.value_and_grad(loss_fn, has_aux=True)(vs, w, base, batch, step)
        return optimizer_update(opt, g, st, vs), {"loss": loss, "reg": reg, **aux}

    run = _StepRunner(one, traces)
    vs, st = v0, opt.init(v0)
    hist = []
    bar = tqdm(total=total, desc="rounding", disable=not progress, leave=False)
    consts = (w, base, pools, key)
    loop_steps = run.loops_steps((vs, st), consts, jnp.int32(0))
    for steps in _chunks(total, config.steps_per_call):
        (vs, st), metrics = run((vs, st), consts, steps, loop_steps=loop_steps)
        _stop_if_not_finite(metrics["loss"], steps, f"optimize_rounding of {sorted(qs)}")
        hist.append(metrics)
        bar.update(int(steps.shape[0]))
        bar.set_postfix(loss=f"{float(metrics['loss'][-1]):.4g}")
    bar.close()
    soft = []
    for p, q in qs.items():
        h, flat[p] = _finish(w[p], vs[p], q, config.zeta, config.gamma)
        soft.append(jnp.sum((h > 0) & (h < 1)))
        check_on_grid(flat[p], q, path=p)
    out = unflatten_params(flat)
    if not return_info:
        return out
    info = {k: jnp.concatenate([m[k] for m in hist]) for k in hist[0]}
    info["soft_fraction"] = float(sum(soft)) / n_weights
    info["traces"] = len(traces)
    return out, info
