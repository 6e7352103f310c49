"""Quantization-aware training: an optax loop over latent float weights and quantizer scales.

Each step (white paper section 4; LSQ: Esser et al. 2020; QAT basin paper: "gradients at
quantized weights bias to the low-loss basin")::

    s      <- range_method(w)            every `range_update_every` steps (scale_mode="range")
    w_q     = Q(w; s)                     fake-quantized weights (the deployed network)
    L       = CE(f(w_q, x), y)            gradient_at="quantized" (STE)
            = CE(f(w, x), y)              gradient_at="float" (ablation)
    g       = dL/dw  (masked STE: dQ/dw = 1 inside the clip range, 0 outside)
    w, s   <- optax update (w latent float; s only with scale_mode="learned")
    s      <- max(s, min_scale_ratio * s_init)   (learned scales: positivity guard)

The step ``step(state, batch) -> (state, metrics)`` is jitted once (static shapes: the last
incomplete batch of an epoch is dropped) and runs on float training's loop,
:func:`bq_jax.train.run_epochs`: batches of epoch ``e`` are the permutation
``jax.random.permutation(fold_in(key, e), N)`` cut into ``batch_size`` pieces, so a run is
a pure function of ``(variables, data, config, key)``; checkpoints are training-state files of
:mod:`bq_jax.train` (:func:`qat_checkpoint_path`), and a resumed run is bit-identical to an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from bq_jax import quant
from bq_jax.data import fingerprint_of
from bq_jax.qat import quantizers as qz
from bq_jax.qat.config import QATConfig
from bq_jax.train import Checkpointing, NonFiniteLossError, accuracy, optimizer_update, run_epochs

__all__ = [
    "QATDivergedError",
    "QATProgram",
    "QATResult",
    "QATState",
    "QAT_CHECKPOINT_NAME",
    "check_variables_match",
    "make_qat_program",
    "qat_checkpoint_path",
    "qat_train",
]

ACTIVATION_KEY = "activation_qparams"
#: File name of the training-state checkpoint inside qat_train's checkpoint_dir.
QAT_CHECKPOINT_NAME = "qat_state.ckpt"
_ACT_INIT_EXAMPLES = 1024
_FWD_KEY = 1 << 30


class QATDivergedError(FloatingPointError):
    """The QAT loss became NaN/inf. ``step`` is the first bad step; ``checkpoint`` the last good
    checkpoint directory on disk (or None)."""

    def __init__(self, step: int, checkpoint: str | None, what: str = "loss"):
        self.step = step
        self.checkpoint = checkpoint
        where = (
            f"the last good checkpoint is kept in {checkpoint!r}"
            if checkpoint
            else "no checkpoint was written (pass checkpoint_dir to keep one)"
        )
        super().__init__(
            f"QAT diverged: the {what} is NaN/inf at step {step}; stopped, {where}. "
            "Lower learning_rate (or scale_learning_rate), or check the data for NaN."
        )

    def __reduce__(self):
        return (type(self), (self.step, self.checkpoint))


class QATState(NamedTuple):
    """Everything the step carries (a pytree).

    Attributes:
      step: int32 scalar, steps taken.
      params: latent float variables dict (``"params"`` trained; other collections such as
        ``"batch_stats"`` updated by the training-mode forward pass).
      scales: ``{path: scale}`` of every quantized leaf (learned in LSQ mode).
      zero_points: ``{path: zero_point}`` (int32).
      scale_floor: ``{path: floor}`` positivity guard of learned scales.
      activations: ``{layer: {"scale", "zero_point", "lo", "hi"}}`` activation quantizers at
        Dense/Conv inputs (empty without activation quantization).
      opt_state: optax state.
      rng: uint32 key data of the training-mode forward key (dropout); step ``t`` uses
        ``fold_in(wrap_key_data(rng), t)``.
    """

    step: jax.Array
    params: Any
    scales: Any
    zero_points: Any
    scale_floor: Any
    activations: Any
    opt_state: Any
    rng: jax.Array


@dataclasses.dataclass(frozen=True)
class QATProgram:
    """The compiled pieces of one QAT setup (see :func:`make_qat_program`).

    Attributes:
      init: ``init(variables_float, x_init) -> QATState``.
      step: jitted ``step(state, (x, y)) -> (state, metrics)``; metrics ``loss`` (objective at
        the point the gradient is taken), ``grad_norm`` (of the weight gradient) and
        ``scales_clamped`` (learned scales held at their floor after the update).
      deploy: ``deploy(state) -> variables`` with every quantized leaf on its grid (plus the
        ``activation_qparams`` collection when activations are quantized).
      apply_fn: deployed ``apply_fn(variables, x) -> logits``.
      quantized: ``quantized(params, scales) -> variables``: ``Q(w; s)`` of a latent dict.
      plan: the :class:`~bq_jax.qat.quantizers.LeafPlan` of every quantized leaf.
      traces: list that grows by one each time ``step`` is traced (compilations).
    """

    init: Callable
    step: Callable
    deploy: Callable
    apply_fn: Callable
    quantized: Callable
    plan: tuple
    traces: list


@dataclasses.dataclass
class QATResult:
    """What :func:`qat_train` returns.

    Attributes:
      params: latent float variables dict after training.
      scales: ``{path: scale}`` of the deployed quantizers; zero_points likewise.
      variables: the deployed quantized variables dict (weights on their grids).
      apply_fn: ``apply_fn(variables, x) -> logits`` of the deployed model.
      history: ``loss`` (float[steps], objective per step), ``grad_norm`` (float[steps]),
        ``scales_clamped`` (int[steps]), ``epoch_loss`` (mean loss per epoch),
        ``epoch_heldout_accuracy`` (with ``eval_heldout``), ``snapshots`` (with
        ``snapshot_every``: list of ``{"step", "params", "scales", "zero_points"}``: latent
        ``params`` collection and the quantizer state after that many steps, as numpy),
        ``steps_per_epoch``.
      config: the :class:`QATConfig`.
      state: the final :class:`QATState`.
      traces: how many times the step function was traced during this call (1: compiled
        once; 0: a cached compilation of an identical setup was reused).
    """

    params: Any
    scales: dict
    zero_points: dict
    variables: Any
    apply_fn: Callable
    history: dict
    config: QATConfig
    state: QATState
    traces: int


# ----------------------------------------------------------------------------- checks


def _flat(variables) -> dict:
    from bq_jax.ptq import flatten_params

    return flatten_params(variables)


def check_variables_match(reference, variables, *, what: str = "variables") -> None:
    """Raises ``ValueError`` unless ``variables`` has the leaf paths, shapes and dtypes of
    ``reference`` (arrays or ``jax.ShapeDtypeStruct``), naming every difference.

    Example:
      >>> reference = {"params": {"Dense_0": {"kernel": jnp.zeros((4, 3))}}}
      >>> check_variables_match(reference, {"params": {"Dense_0": {"kernel": jnp.ones((4, 3))}}})
      >>> check_variables_match(reference, {"params": {"Dense_0": {"kernel": jnp.ones((4, 2))}}})
      Traceback (most recent call last):
      ...
      ValueError: variables do not match the model's parameter tree (shape/dtype mismatch ...
    """
    if not isinstance(variables, Mapping):
        raise TypeError(
            f"{what} must be a flax variables dict {{'params': ...}}, "
            f"got {type(variables).__name__}"
        )
    ref, got = _flat(reference), _flat(variables)
    missing = sorted(set(ref) - set(got))
    extra = sorted(set(got) - set(ref))
    shapes = [
        f"{p}: expected {tuple(ref[p].shape)} {jnp.dtype(ref[p].dtype)}, got "
        f"{tuple(jnp.shape(got[p]))} {jnp.asarray(got[p]).dtype}"
        for p in ref
        if p in got
        and (
            tuple(ref[p].shape) != tuple(jnp.shape(got[p]))
            or jnp.dtype(ref[p].dtype) != jnp.asarray(got[p]).dtype
        )
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing leaves {missing}")
        if extra:
            parts.append(f"unexpected leaves {extra}")
        if shapes:
            parts.append("shape/dtype mismatch " + "; ".join(shapes))
        raise ValueError(
            f"{what} do not match the model's parameter tree ({', '.join(parts)}); were they "
            "saved from another model (architecture, width or number of classes)?"
        )


def _split_data(data):
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = data
        heldout = None
    elif hasattr(data, "x_train") and hasattr(data, "y_train"):
        x, y = data.x_train, data.y_train
        heldout = (data.x_heldout, data.y_heldout) if hasattr(data, "x_heldout") else None
    else:
        raise TypeError(
            "data must be a bq_jax.data.Dataset (x_train, y_train, ...) or a pair (x, y), "
            f"got {type(data).__name__}"
        )
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"training inputs must be a non-empty batch x[N, ...], got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"training inputs must be floating point, got {x.dtype}")
    if y.shape != (x.shape[0],) or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(
            f"training labels must be integers of shape ({x.shape[0]},), got {y.dtype}{y.shape}"
        )
    return x, y, heldout


# ----------------------------------------------------------------------------- the program


def _optimizer(config: QATConfig, total_steps: int, lr: float):
    if config.schedule == "cosine":
        lr = optax.cosine_decay_schedule(lr, max(total_steps, 1))
    if config.optimizer == "adam":
        return optax.adam(lr)
    if config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return optax.sgd(lr)
    return optax.sgd(lr, momentum=0.9)


def _training_forward(model) -> Callable:
    """``forward(variables, x, key) -> (logits, updated non-param collections)``.

    ``model.apply_train(variables, x, key=key) -> (logits, updates)`` (training mode: batch
    statistics, dropout) when the model has it, else ``model.apply_fn``.
    """
    apply_train = getattr(model, "apply_train", None)

    def forward(variables, x, key):
        extra = {k: v for k, v in variables.items() if k != "params"}
        if apply_train is None:
            return model.apply_fn(variables, x), extra
        logits, updates = apply_train(variables, x, key=key)
        return logits, {**extra, **dict(updates)}

    return forward


def _tree_signature(variables) -> tuple:
    return tuple(
        (p, tuple(jnp.shape(v)), str(jnp.asarray(v).dtype)) for p, v in _flat(variables).items()
    )


@functools.lru_cache(maxsize=32)
def _cached_program(model, config, signature, total_steps):
    template = {}
    for path, shape, dtype in signature:
        node = template
        *parents, leaf = path.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = np.zeros(shape, jnp.dtype(dtype))
    return _build_program(model, template, config, total_steps)


def make_qat_program(
    model, variables_float, config: QATConfig, *, total_steps: int = 1
) -> QATProgram:
    """Builds the QAT step and its helpers for ``model`` (an object with ``apply_fn``, and
    ``apply_train(variables, x, *, key) -> (logits, updates)`` for training mode).

    Programs are cached per (model, config, parameter shapes, total_steps) when the model is
    hashable (``bq_jax.models.Model`` is), so repeated runs (seeds, tests) compile the step
    once.

    Args:
      model: a ``bq_jax.models.Model`` (``apply_fn(variables, x) -> logits``).
      variables_float: float variables dict (fixes the quantization plan).
      config: a :class:`QATConfig`.
      total_steps: number of steps of the run (for the learning-rate schedule).

    Returns:
      A :class:`QATProgram`.

    Example:
      >>> from bq_jax.models import make_model
      >>> model = make_model("mlp", num_classes=3, input_shape=(4,), width=8)
      >>> variables = model.init(jax.random.key(0))
      >>> prog = make_qat_program(model, variables, QATConfig(weights=quant.QuantConfig(bits=4)))
      >>> x, y = jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)
      >>> state, metrics = prog.step(prog.init(variables, x), (x, y))
      >>> int(state.step), sorted(metrics)
      (1, ['grad_norm', 'loss', 'scales_clamped'])
    """
    if not isinstance(config, QATConfig):
        raise TypeError(f"config must be a QATConfig, got {type(config).__name__}")
    signature = _tree_signature(variables_float)
    try:
        hash((model, config))
    except TypeError:
        return _build_program(model, variables_float, config, total_steps)
    return _cached_program(model, config, signature, int(total_steps))


def _build_program(model, variables_float, config: QATConfig, total_steps: int) -> QATProgram:
    from bq_jax.ptq import activation_quantized_apply, rewrite_layers

    plan = qz.resolve_plan(variables_float, config.weights, targets=config.targets)
    learned = config.learned
    act_cfg = config.activation_config()
    forward = _training_forward(model)
    apply_fn = model.apply_fn
    traces: list[int] = []

    def quantized(params, scales, zero_points):
        return qz.quantize_variables(params, plan, scales, zero_points, learned=learned)

    # ------------------------------------------------------------------ activations
    if act_cfg is not None:
        a_qmin, a_qmax = act_cfg.qrange

    def _act_from_range(lo, hi):
        qp = quant.qparams_from_range(lo, hi, qmin=a_qmin, qmax=a_qmax, symmetric=False)
        return qp.scale, qp.zero_point.astype(jnp.float32)

    def _batch_range(a):
        qp = quant.compute_qparams(jax.lax.stop_gradient(a), act_cfg)
        lo = (a_qmin - qp.zero_point.astype(jnp.float32)) * qp.scale
        hi = (a_qmax - qp.zero_point.astype(jnp.float32)) * qp.scale
        return lo, hi

    def _fq_act(a, q):
        s = jnp.asarray(q["scale"], a.dtype)
        z = jnp.asarray(q["zero_point"], a.dtype)
        if learned:
            n = max(int(np.prod(a.shape[1:])), 1)
            g = quant.lsq_grad_scale(n, a_qmax)
            return quant.int_fake_quant(
                a, s, z, qmin=a_qmin, qmax=a_qmax, scale_grad="lsq", grad_scale=g
            )
        return quant.int_fake_quant(a, jax.lax.stop_gradient(s), z, qmin=a_qmin, qmax=a_qmax)

    def with_activations(fn, acts):
        """``fn`` with fake-quantized Dense/Conv inputs; also returns each input's range."""
        seen: dict = {}

        def rewrite(name, a):
            seen[name] = _batch_range(a)
            return _fq_act(a, acts[name]) if name in acts else a

        wrapped = rewrite_layers(fn, inputs=rewrite)

        def run(variables, x):
            out = wrapped(variables, x)
            return out, dict(seen)

        return run

    # ------------------------------------------------------------------ init
    def init(variables, x_init, key=None) -> QATState:
        scales, zps = qz.init_qparams(variables, plan)
        floors = {
            p: jnp.maximum(config.min_scale_ratio * s, jnp.finfo(jnp.float32).tiny)
            for p, s in scales.items()
        }
        acts = {}
        if act_cfg is not None:
            vq = quantized(variables, scales, zps)
            _, ranges = jax.jit(with_activations(lambda v, x: apply_fn(v, x), {}))(vq, x_init)
            for name, (lo, hi) in ranges.items():
                s, z = _act_from_range(lo, hi)
                acts[name] = {"scale": s, "zero_point": z, "lo": lo, "hi": hi}
        trainable = _trainable(variables["params"], scales, acts)
        return QATState(
            step=jnp.zeros((), jnp.int32),
            params=variables,
            scales=scales,
            zero_points=zps,
            scale_floor=floors,
            activations=acts,
            opt_state=tx.init(trainable),
            rng=jax.random.key_data(jax.random.key(0) if key is None else key),
        )

    def _trainable(weights, scales, acts):
        t = {"weights": weights}
        if learned:
            t["scales"] = scales
            t["activation_scales"] = {k: v["scale"] for k, v in acts.items()}
        return t

    def _labels(trainable):
        return {
            k: jax.tree.map(lambda _, label="weights" if k == "weights" else "scales": label, v)
            for k, v in trainable.items()
        }

    lr_s = config.scale_learning_rate or config.learning_rate
    tx = optax.multi_transform(
        {
            "weights": _optimizer(config, total_steps, config.learning_rate),
            "scales": _optimizer(config, total_steps, lr_s),
        },
        _labels,
    )

    # ------------------------------------------------------------------ step
    def loss_fn(trainable, state: QATState, x, y):
        variables = {**state.params, "params": trainable["weights"]}
        scales = trainable["scales"] if learned else state.scales
        acts = state.activations
        if learned and acts:
            acts = {k: {**v, "scale": trainable["activation_scales"][k]} for k, v in acts.items()}
        if config.gradient_at == "quantized":
            variables = quantized(variables, scales, state.zero_points)
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def fwd(v, xb):
            return forward(v, xb, key)

        if act_cfg is not None:
            (logits, updates), ranges = with_activations(fwd, acts)(variables, x)
        else:
            (logits, updates), ranges = fwd(variables, x), {}
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (updates, ranges)

    def step(state: QATState, batch) -> tuple[QATState, dict]:
        traces.append(1)  # runs only while tracing: counts compilations
        x, y = batch
        scales, zps = state.scales, state.zero_points
        k = config.range_update_every
        if not learned and k > 0:

            def fresh():
                return qz.init_qparams(state.params, plan)

            if k == 1:
                scales, zps = fresh()
            else:
                scales, zps = jax.lax.cond(
                    state.step % k == 0, fresh, lambda: (state.scales, state.zero_points)
                )
        state = state._replace(scales=scales, zero_points=zps)
        trainable = _trainable(state.params["params"], scales, state.activations)
        (loss, (updates, ranges)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, state, x, y
        )
        new, opt_state = optimizer_update(tx, grads, state.opt_state, trainable)
        params = {**state.params, **updates, "params": new["weights"]}
        clamped = jnp.zeros((), jnp.int32)
        acts = state.activations
        if learned:
            scales = {}
            for p, s in new["scales"].items():
                floor = state.scale_floor[p]
                clamped = clamped + jnp.sum(s <= floor).astype(jnp.int32)
                scales[p] = jnp.maximum(s, floor)
            acts = {
                k2: {
                    **v,
                    "scale": jnp.maximum(
                        new["activation_scales"][k2], config.min_scale_ratio * v["scale"]
                    ),
                }
                for k2, v in acts.items()
            }
        elif acts:
            m = config.activation_momentum
            acts = {}
            for name, v in state.activations.items():
                lo_b, hi_b = ranges[name]
                lo = m * v["lo"] + (1.0 - m) * lo_b
                hi = m * v["hi"] + (1.0 - m) * hi_b
                s, z = _act_from_range(lo, hi)
                acts[name] = {"scale": s, "zero_point": z, "lo": lo, "hi": hi}
        gnorm = optax.tree.norm(grads["weights"])
        new_state = QATState(
            step=state.step + 1,
            params=params,
            scales=scales,
            zero_points=state.zero_points if learned else zps,
            scale_floor=state.scale_floor,
            activations=acts,
            opt_state=opt_state,
            rng=state.rng,
        )
        return new_state, {"loss": loss, "grad_norm": gnorm, "scales_clamped": clamped}

    # ------------------------------------------------------------------ deploy
    deployed_apply = apply_fn if act_cfg is None else activation_quantized_apply(apply_fn, act_cfg)

    def deploy(state: QATState):
        scales, zps = state.scales, state.zero_points
        if not learned and config.range_update_every > 0:
            # Range scales are a function of the weights: those of the final latent weights.
            scales, zps = qz.init_qparams(state.params, plan)
        out = quantized(state.params, scales, zps)
        if act_cfg is not None:
            out = {
                **out,
                ACTIVATION_KEY: {
                    name: {"input": {"scale": v["scale"], "zero_point": v["zero_point"]}}
                    for name, v in state.activations.items()
                },
            }
        return out

    return QATProgram(
        init=init,
        step=jax.jit(step),
        deploy=deploy,
        apply_fn=deployed_apply,
        quantized=quantized,
        plan=plan,
        traces=traces,
    )


# ----------------------------------------------------------------------------- the loop


def qat_checkpoint_path(checkpoint_dir: str | os.PathLike) -> str:
    """The checkpoint file of :func:`qat_train` in ``checkpoint_dir``: a training-state file
    of the :mod:`bq_jax.train` format (read it with ``bq_jax.train.load_train_state``).

    Example:
      >>> qat_checkpoint_path("/tmp/run")
      '/tmp/run/qat_state.ckpt'
    """
    return os.path.join(os.fspath(checkpoint_dir), QAT_CHECKPOINT_NAME)


def _snapshot(state: QATState) -> dict:
    return {
        "step": int(state.step),
        "params": jax.device_get(state.params["params"]),
        "scales": jax.device_get(state.scales),
        "zero_points": jax.device_get(state.zero_points),
    }


def qat_train(
    model,
    variables_float,
    data,
    config: QATConfig,
    key: jax.Array,
    *,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    callback: Callable | None = None,
) -> QATResult:
    """Quantization-aware training of ``model`` from ``variables_float`` (see module docstring).

    Args:
      model: a ``bq_jax.models.Model`` (``init``, ``apply_fn``; ``apply_train`` for batch-norm
        models).
      variables_float: trained float variables dict of ``model`` (checked against
        ``model.init``'s tree).
      data: a ``bq_jax.data.Dataset`` (trains on ``x_train, y_train``; ``x_heldout,
        y_heldout`` for ``eval_heldout``) or a pair ``(x, y)``.
      config: a :class:`QATConfig`.
      key: PRNG key; batches of epoch ``e`` use ``fold_in(key, e)``.
      progress: tqdm bar over steps.
      checkpoint_dir: write a checkpoint (:func:`qat_checkpoint_path`, the
        :mod:`bq_jax.train` training-state format) every ``config.checkpoint_every`` epochs
        and at the end; if it already holds one of this setup (model, config, data), training
        resumes from it.
      callback: ``callback(epoch, state, record)`` after every epoch, ``record`` holding the
        epoch's ``epoch_loss`` (and ``heldout_accuracy``); return ``True`` to stop early.

    Returns:
      A :class:`QATResult`.

    Raises:
      ValueError: variables of another model (tree mismatch), a checkpoint of another setup
        (``bq_jax.train.CheckpointMismatchError``), a batch larger than the training set.
      QATDivergedError: the loss became NaN/inf; names the step, keeps the last checkpoint.

    Example:
      >>> from bq_jax.data import load_dataset
      >>> from bq_jax.models import make_model
      >>> data = load_dataset("digits")
      >>> model = make_model("mlp", num_classes=10, input_shape=(64,))
      >>> variables = model.init(jax.random.key(0))  # in practice: trained float variables
      >>> cfg = QATConfig(weights=quant.QuantConfig(bits=3, granularity="per_channel"), epochs=1)
      >>> res = qat_train(model, variables, data, cfg, jax.random.key(0), progress=False)
      >>> res.history["loss"].shape  # 1047 // 64 steps
      (16,)
      >>> acc = accuracy(res.apply_fn, res.variables, data.x_heldout, data.y_heldout)
    """
    if not isinstance(config, QATConfig):
        raise TypeError(f"config must be a QATConfig, got {type(config).__name__}")
    if hasattr(model, "init"):
        check_variables_match(
            jax.eval_shape(model.init, jax.random.key(0)), variables_float, what="variables_float"
        )
    x, y, heldout = _split_data(data)
    n = x.shape[0]
    if config.batch_size > n:
        raise ValueError(
            f"batch_size={config.batch_size} is larger than the training set ({n} examples)"
        )
    if config.eval_heldout and heldout is None:
        raise ValueError("eval_heldout=True needs data with x_heldout / y_heldout (a Dataset)")
    spe = n // config.batch_size
    total = spe * config.epochs
    prog = make_qat_program(model, variables_float, config, total_steps=total)
    traces_before = len(prog.traces)
    # Training-mode forward key (dropout); disjoint from the epoch keys fold_in(key, e).
    state = prog.init(
        variables_float, x[: min(n, _ACT_INIT_EXAMPLES)], jax.random.fold_in(key, _FWD_KEY)
    )
    lists = ["loss", "grad_norm", "scales_clamped", "epoch_loss"]
    if config.eval_heldout:
        lists.append("epoch_heldout_accuracy")
    history: dict[str, Any] = {k: [] for k in lists}
    history["steps_per_epoch"] = spe
    snapshots: list = []
    start_epoch = 0
    checkpointing = None
    if checkpoint_dir is not None:
        fingerprint = getattr(data, "fingerprint", None)
        if fingerprint is None:
            fingerprint = fingerprint_of({"x": np.asarray(x), "y": np.asarray(y)})
        checkpointing = Checkpointing(
            path=qat_checkpoint_path(checkpoint_dir),
            every=config.checkpoint_every,
            model=model,
            train_config=config,
            data_fingerprint=fingerprint,
        )
        resumed = checkpointing.resume(state)
        if resumed is not None:
            state, start_epoch, extra = resumed
            history.update({k: list(extra["history"].get(k, [])) for k in lists})
    if config.snapshot_every and start_epoch == 0:
        snapshots.append(_snapshot(state))

    def on_step(state, metrics):
        if int(state.step) % config.snapshot_every == 0:
            snapshots.append(_snapshot(state))

    def on_epoch(epoch, state, metrics):
        if not all(bool(jnp.all(jnp.isfinite(s))) for s in jax.tree.leaves(state.scales)):
            last = checkpointing.last_good() if checkpointing is not None else None
            raise QATDivergedError(epoch * spe + spe - 1, checkpoint_dir if last else None, "scale")
        loss = np.asarray(metrics["loss"], np.float64)
        history["loss"] += loss.tolist()
        history["grad_norm"] += metrics["grad_norm"].tolist()
        history["scales_clamped"] += [int(c) for c in metrics["scales_clamped"]]
        record = {"epoch": epoch, "epoch_loss": float(loss.mean())}
        history["epoch_loss"].append(record["epoch_loss"])
        if config.eval_heldout:
            acc = accuracy(prog.apply_fn, prog.deploy(state), *heldout, batch_size=2048)
            history["epoch_heldout_accuracy"].append(acc)
            record["heldout_accuracy"] = acc
        bar.set_postfix(loss=f"{record['epoch_loss']:.4f}")
        return bool(callback(epoch, state, record)) if callback is not None else False

    bar = tqdm(
        total=total,
        initial=start_epoch * spe,
        desc=f"qat {config.gradient_at}/{config.scale_mode}",
        disable=not progress,
        leave=False,
    )
    try:
        state = run_epochs(
            prog.step,
            state,
            x,
            y,
            batch_size=config.batch_size,
            epochs=config.epochs,
            shuffle_key=key,
            start_epoch=start_epoch,
            on_step=on_step if config.snapshot_every else None,
            on_epoch=on_epoch,
            checkpointing=checkpointing,
            checkpoint_extra=lambda: {"history": {k: history[k] for k in lists}},
            bar=bar,
        ).state
    except NonFiniteLossError as e:
        raise QATDivergedError(e.step, checkpoint_dir if e.checkpoint else None) from e
    finally:
        bar.close()
    if config.snapshot_every and (not snapshots or snapshots[-1]["step"] != int(state.step)):
        snapshots.append(_snapshot(state))
    for k in ("loss", "grad_norm"):
        history[k] = np.asarray(history[k], np.float64)
    history["scales_clamped"] = np.asarray(history["scales_clamped"], np.int64)
    history["epoch_loss"] = np.asarray(history["epoch_loss"], np.float64)
    if config.snapshot_every:
        history["snapshots"] = snapshots
    deployed = prog.deploy(state)
    scales, zps = state.scales, state.zero_points
    if config.scale_mode == "range" and config.range_update_every > 0:
        scales, zps = qz.init_qparams(state.params, prog.plan)
    return QATResult(
        params=state.params,
        scales=scales,
        zero_points=zps,
        variables=deployed,
        apply_fn=prog.apply_fn,
        history=history,
        config=config,
        state=state,
        traces=len(prog.traces) - traces_before,
    )
