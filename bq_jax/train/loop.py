"""The training loop of float training and QAT, float training itself, and batched jitted
``accuracy``.

:func:`run_epochs` is the one epoch driver: it runs a jitted ``step(state, batch) -> (state,
metrics)`` over shuffled epochs (epoch ``e`` visits ``permutation(fold_in(shuffle_key, e), N)``
in full batches, :func:`bq_jax.data.batch_indices`), advances a progress bar, stops with
:class:`NonFiniteLossError` when the loss becomes NaN/inf, and with :class:`Checkpointing`
saves the training state (:func:`bq_jax.train.save_train_state`) so that an interrupted run
resumes bit for bit. :func:`train` (float) and ``bq_jax.qat.qat_train`` (QAT) run on it.

Randomness of :func:`train`: ``key`` is split into (init, shuffle, step) keys; the shuffle key
drives :func:`run_epochs`; step ``t`` draws its dropout / augmentation key as
``fold_in(step_key, t)``. The same key gives bitwise identical variables on one machine.

Monitoring uses the calibration split (drawn from the training pool, disjoint from train and
from the held-out split); the held-out split is never read.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from bq_jax._src.checks import check_int
from bq_jax.data import batch_indices, num_batches, validate_split
from bq_jax.train.checkpoint import load_train_state, save_train_state
from bq_jax.train.config import TrainConfig

__all__ = [
    "Checkpointing",
    "EpochRun",
    "NonFiniteLossError",
    "TrainState",
    "accuracy",
    "augment_images",
    "cross_entropy",
    "make_optimizer",
    "make_train_step",
    "optimizer_update",
    "run_epochs",
    "train",
    "train_with_history",
]


class NonFiniteLossError(ValueError):
    """The training loss became NaN or inf (training stopped; nothing is returned).

    Attributes:
        epoch: the epoch of the first bad step (0-based).
        step: the first bad step, counted over the whole run (0-based: steps taken before it).
        checkpoint: the last good checkpoint file on disk, or None.
    """

    def __init__(self, message: str, *, epoch=None, step=None, checkpoint=None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.checkpoint = checkpoint


class TrainState(NamedTuple):
    """Everything one training step reads and writes (a pytree)."""

    # Steps taken so far (int32 scalar); the step key is fold_in(key, step).
    step: jax.Array
    # Trainable variables (the "params" collection).
    params: Any
    # Non-trainable collections updated by the forward pass ({"batch_stats": ...} or {}).
    extra: dict
    # optax optimizer state.
    opt_state: Any
    # Base key of the per-step dropout / augmentation keys.
    key: jax.Array

    @property
    def variables(self) -> dict:
        """The flax variables dict ``{"params": ..., **extra}``."""
        return {"params": self.params, **self.extra}


def _check_key(key) -> jax.Array:
    if isinstance(key, int | np.integer) or not hasattr(key, "dtype"):
        raise TypeError(
            f"key must be a jax.random key (e.g. jax.random.key(seed)), got {type(key).__name__}"
        )
    if not (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,)):
        raise TypeError(
            "key must be a jax.random key: a typed key (jax.random.key) or a raw uint32[2] "
            f"key (jax.random.PRNGKey); got dtype {key.dtype}, shape {key.shape}"
        )
    return key


def cross_entropy(logits, labels, *, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy ``-sum_k t_k log softmax(z)_k`` with smoothed targets
    ``t = (1 - alpha) * one_hot(y) + alpha / K`` (Szegedy et al. 2016, section 7).

    Args:
        logits: ``[N, K]``.
        labels: int ``[N]``.
        label_smoothing: alpha in [0, 1).

    Returns:
        Scalar mean loss.

    Example:
        >>> float(cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3])))  # log 4
        1.3862943649291992
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must be int [N] matching logits [N, K] = {list(logits.shape)}, got labels "
            f"of shape {list(labels.shape)}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    k = logits.shape[-1]
    targets = jax.nn.one_hot(labels, k, dtype=logits.dtype)
    if label_smoothing > 0.0:
        targets = optax.smooth_labels(targets, label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def augment_images(x, key) -> jax.Array:
    """Random crop after 4-pixel zero padding, and a random horizontal flip, per image.

    The standard CIFAR augmentation (He et al. 2016, section 4.2). Inputs are standardised, so
    zero padding is the mean colour.

    Args:
        x: images ``[N, H, W, C]``.
        key: ``jax.random`` key.

    Returns:
        Augmented images, same shape and dtype.
    """
    n, h, w, c = x.shape
    k_flip, k_row, k_col = jax.random.split(key, 3)
    flip = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1, :], x)
    pad = 4
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = jax.random.randint(k_row, (n,), 0, 2 * pad + 1)
    cols = jax.random.randint(k_col, (n,), 0, 2 * pad + 1)
    crop = lambda img, i, j: jax.lax.dynamic_slice(img, (i, j, 0), (h, w, c))
    return jax.vmap(crop)(xp, rows, cols)


def optimizer_update(tx: optax.GradientTransformation, grads, opt_state, params):
    """``(new_params, new_opt_state)``: one optax update of ``params`` by ``grads``.

    optax's Adam bias correction computes ``decay ** count`` of a Python float and the int32
    step count, an implicit int-to-float promotion that ``jax_numpy_dtype_promotion="strict"``
    refuses; the update runs under standard promotion so that training works in either mode
    (the numbers are the same).

    Example:
        >>> tx = optax.adam(0.1)
        >>> p = {"w": jnp.ones(2)}
        >>> p, st = optimizer_update(tx, {"w": jnp.ones(2)}, tx.init(p), p)
        >>> np.round(np.asarray(p["w"]), 4)
        array([0.9, 0.9], dtype=float32)
    """
    with jax.numpy_dtype_promotion("standard"):
        deltas, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, deltas), opt_state


def _kernel_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def make_optimizer(config: TrainConfig, *, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax transformation of ``config`` (clipping, weight decay, optimizer, schedule).

    Args:
        config: training settings.
        steps_per_epoch: optimizer steps per epoch (sets the schedule's length).

    Returns:
        An ``optax.GradientTransformation``.
    """
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total)
    lr = config.learning_rate
    if config.schedule == "cosine":
        body = optax.cosine_decay_schedule(lr, max(total - warmup, 1))
    else:
        body = optax.constant_schedule(lr)
    if warmup > 0:
        schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), body], [warmup])
    else:
        schedule = body
    parts = []
    if config.max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(config.max_grad_norm))
    if config.optimizer == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=config.weight_decay, mask=_kernel_mask))
    else:
        if config.weight_decay > 0.0:
            parts.append(optax.add_decayed_weights(config.weight_decay, mask=_kernel_mask))
        if config.optimizer == "adam":
            parts.append(optax.adam(schedule))
        else:
            parts.append(optax.sgd(schedule, momentum=config.momentum or None))
    return optax.chain(*parts)


def make_train_step(model, config: TrainConfig, tx: optax.GradientTransformation):
    """``(init_state, step)`` for ``model`` under ``config``.

    ``init_state(variables, key) -> TrainState``; ``step(state, (x, y)) -> (state, metrics)``
    (not jitted here) with ``metrics = {"loss", "accuracy"}`` of the batch in training mode.
    ``step.num_traces`` counts how often ``step`` was traced (1 when compiled once).

    Args:
        model: a :class:`bq_jax.models.Model` (``apply_train``).
        config: training settings (label smoothing, augmentation).
        tx: optax transformation (:func:`make_optimizer`).

    Returns:
        ``(init_state, step)``.
    """
    augment = config.augment
    smoothing = config.label_smoothing

    def init_state(variables, key) -> TrainState:
        params = variables["params"]
        extra = {k: v for k, v in variables.items() if k != "params"}
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            extra=extra,
            opt_state=tx.init(params),
            key=key,
        )

    def step(state: TrainState, batch):
        step.num_traces += 1
        x, y = batch
        k_aug, k_drop = jax.random.split(jax.random.fold_in(state.key, state.step))
        if augment:
            x = augment_images(x, k_aug)

        def loss_fn(params):
            logits, updates = model.apply_train({"params": params, **state.extra}, x, key=k_drop)
            return cross_entropy(logits, y, label_smoothing=smoothing), (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        params, opt_state = optimizer_update(tx, grads, state.opt_state, state.params)
        acc = jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            extra={**state.extra, **updates},
            opt_state=opt_state,
            key=state.key,
        )
        return new_state, {"loss": loss, "accuracy": acc}

    step.num_traces = 0
    return init_state, step


@functools.lru_cache(maxsize=16)
def _compiled_step(model, config: TrainConfig, steps_per_epoch: int):
    """``(init_state, step_fn, jax.jit(step_fn))``, shared by trainings with equal arguments so
    that a second training (another seed) reuses the compiled step."""
    tx = make_optimizer(config, steps_per_epoch=steps_per_epoch)
    init_state, step_fn = make_train_step(model, config, tx)
    return init_state, step_fn, jax.jit(step_fn)


# ------------------------------------------------------------------------------------ accuracy
@functools.lru_cache(maxsize=64)
def _count_correct(apply_fn: Callable):
    def count(variables, x, y, n_valid):
        pred = jnp.argmax(apply_fn(variables, x), axis=-1)
        valid = jnp.arange(x.shape[0]) < n_valid
        return jnp.sum(jnp.logical_and(pred == y, valid).astype(jnp.int32))

    return jax.jit(count)


def _check_xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x must be [N, ...] and y [N] with the same N, got x.shape={x.shape}, "
            f"y.shape={y.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError("x and y are empty; accuracy needs at least one example")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"x must be a real numeric array, got dtype {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"y must hold integer labels, got dtype {y.dtype}")
    finite = np.isfinite(x)
    if not finite.all():
        raise ValueError(f"x contains {int((~finite).sum())} NaN/inf values; inputs must be finite")
    if (y < 0).any():
        raise ValueError(f"y contains negative labels (min {int(y.min())}); labels are >= 0")
    return x, y


def accuracy(apply_fn: Callable, variables, x, y, *, batch_size: int = 1024) -> float:
    """Top-1 accuracy ``mean(argmax apply_fn(variables, x) == y)``, batched and jitted.

    Every batch has ``min(batch_size, N)`` rows (the last one padded and masked), so one
    compilation per (apply_fn, shape) serves any N. Counts are exact integers.

    Args:
        apply_fn: ``apply_fn(variables, x) -> logits``.
        variables: the model's variables.
        x: inputs ``[N, ...]`` (finite).
        y: integer labels ``[N]``.
        batch_size: rows per forward pass.

    Returns:
        Accuracy in [0, 1] as a Python float.

    Raises:
        ValueError: empty or mismatched ``x``/``y``, NaN/inf inputs, negative labels.

    Example:
        >>> from bq_jax.models import make_model
        >>> model = make_model("mlp", num_classes=3, input_shape=(4,), width=8)
        >>> variables = model.init(jax.random.key(0))
        >>> x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
        >>> y = np.asarray(jnp.argmax(model.apply_fn(variables, x), -1))
        >>> accuracy(model.apply_fn, variables, x, y), accuracy(model.apply_fn, variables, x, y + 1)
        (1.0, 0.0)
    """
    batch_size = check_int("batch_size", batch_size, 1)
    x, y = _check_xy(x, y)
    n = x.shape[0]
    b = min(batch_size, n)
    count = _count_correct(apply_fn)
    correct = []
    for i in range(0, n, b):
        xb, yb = x[i : i + b], y[i : i + b]
        m = xb.shape[0]
        if m < b:
            xb = np.concatenate([xb, np.zeros((b - m, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((b - m,), yb.dtype)])
        correct.append(count(variables, xb, yb, m))
    return int(sum(int(c) for c in jax.device_get(correct))) / n


# ------------------------------------------------------------------------------- the epoch loop
@dataclasses.dataclass(frozen=True, kw_only=True)
class Checkpointing:
    """Where and how often :func:`run_epochs` saves the training state, and what the state
    belongs to (stored with it and checked on resume; see :func:`load_train_state`).

    Example:
        >>> Checkpointing(path="/tmp/run.ckpt", every=5).every
        5
    """

    # Checkpoint file (the bq_jax.train checkpoint format, written by save_train_state).
    path: str
    # Save after every this many epochs, and always after the last epoch and on an early stop.
    every: int = 1
    # The bq_jax.models.Model (its to_dict() is stored and compared), or None.
    model: Any = None
    # The run's config (anything with to_dict(): TrainConfig, QATConfig), or None.
    train_config: Any = None
    # Fingerprint of the training data, or None.
    data_fingerprint: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "path", os.fspath(self.path))
        object.__setattr__(self, "every", check_int("every", self.every, 1))

    def _belongs_to(self) -> dict:
        model = self.model if hasattr(self.model, "to_dict") else None
        return {
            "model": model,
            "train_config": self.train_config,
            "data_fingerprint": self.data_fingerprint,
        }

    def resume(self, template) -> tuple[Any, int, Any] | None:
        """``(state, epochs_done, extra)`` from the file, or None when there is none yet.

        Raises:
            CheckpointMismatchError: the file belongs to another model, config, data set or
                state structure.
        """
        if not os.path.isfile(self.path):
            return None
        state, meta = load_train_state(self.path, template, **self._belongs_to())
        return state, int(meta["epoch"]), meta["extra"]

    def save(self, state, epoch: int, extra: Any = None) -> str:
        """Writes ``state`` after ``epoch`` epochs (atomically)."""
        return save_train_state(self.path, state, epoch=epoch, extra=extra, **self._belongs_to())

    def last_good(self) -> str | None:
        """The file if one is on disk (only finite states are ever saved), else None."""
        return self.path if os.path.isfile(self.path) else None


class EpochRun(NamedTuple):
    """What :func:`run_epochs` returns."""

    # The state after the last epoch run.
    state: Any
    # Epochs completed, counting those of a resumed checkpoint.
    epochs_done: int
    # Wall time of the first step of this call (trace and compile unless cached, one step).
    first_step_s: float | None
    # True when on_epoch asked to stop before the last epoch.
    stopped: bool


def _stack(metrics: list) -> dict[str, np.ndarray]:
    host = jax.device_get(metrics)
    return {k: np.asarray([m[k] for m in host]) for k in host[0]} if host else {}


def run_epochs(
    step: Callable,
    state,
    x,
    y,
    *,
    batch_size: int,
    epochs: int,
    shuffle_key: jax.Array,
    start_epoch: int = 0,
    on_step: Callable | None = None,
    on_epoch: Callable | None = None,
    checkpointing: Checkpointing | None = None,
    checkpoint_extra: Callable[[], Any] | None = None,
    bar=None,
    hint: str = "",
) -> EpochRun:
    """Runs ``step`` over epochs ``start_epoch .. epochs - 1`` of shuffled full batches.

    Epoch ``e`` visits ``batch_indices(N, batch_size, key=shuffle_key, epoch=e,
    drop_last=True)``: the permutation ``jax.random.permutation(fold_in(shuffle_key, e), N)``
    cut into ``floor(N / batch_size)`` batches (the remainder, different each epoch, is
    skipped so that every step has one shape and ``step`` compiles once). After each epoch
    the per-step metrics are fetched; a NaN/inf ``loss`` stops the run with
    :class:`NonFiniteLossError`; then ``on_epoch`` runs and, with ``checkpointing``, the state
    is saved every ``checkpointing.every`` epochs, after the last one and on an early stop.

    Args:
        step: ``step(state, (x_batch, y_batch)) -> (state, metrics)`` (jitted by the caller);
            ``metrics`` is a dict of scalars with at least ``"loss"``.
        state: the initial (or resumed) state, any pytree.
        x: inputs ``[N, ...]`` (numpy or JAX array).
        y: labels ``[N]``.
        batch_size: examples per step (<= N).
        epochs: total epochs of the run.
        shuffle_key: JAX PRNG key of the epoch permutations.
        start_epoch: first epoch to run (epochs done by a resumed checkpoint).
        on_step: ``on_step(state, metrics)`` after every step (device metrics), or None.
        on_epoch: ``on_epoch(epoch, state, metrics) -> stop`` after every epoch (``epoch``
            0-based, ``metrics`` a dict of numpy arrays with one entry per step); a true
            return value stops the run after that epoch.
        checkpointing: where and how often to save the state, or None.
        checkpoint_extra: ``() -> JSON value`` stored with every checkpoint (e.g. the history
            so far), or None.
        bar: progress bar advanced once per step (``update(1)``), e.g. tqdm; or None.
        hint: appended to the :class:`NonFiniteLossError` message (what to try).

    Returns:
        An :class:`EpochRun`.

    Raises:
        NonFiniteLossError: the loss became NaN/inf; names the epoch and step, and keeps
            the last good checkpoint (``.checkpoint``).

    Example:
        >>> def step(w, batch):
        ...     xb, yb = batch
        ...     loss, g = jax.value_and_grad(lambda w: jnp.mean((xb * w - yb) ** 2))(w)
        ...     return w - 0.01 * g, {"loss": loss}
        >>> x = jnp.arange(8.0); run = run_epochs(jax.jit(step), jnp.float32(0.0), x, 2 * x,
        ...     batch_size=4, epochs=20, shuffle_key=jax.random.key(0))
        >>> run.epochs_done, round(float(run.state), 3)
        (20, 2.0)
    """
    n = int(np.shape(x)[0])
    steps_per_epoch = num_batches(n, batch_size, drop_last=True)
    start = time.perf_counter()
    first_step_s = None
    for epoch in range(start_epoch, epochs):
        metrics = []
        for idx in batch_indices(n, batch_size, key=shuffle_key, epoch=epoch, drop_last=True):
            state, m = step(state, (x[idx], y[idx]))
            if first_step_s is None:
                jax.block_until_ready(m)
                first_step_s = time.perf_counter() - start
            metrics.append(m)
            if on_step is not None:
                on_step(state, m)
            if bar is not None:
                bar.update(1)
        metrics = _stack(metrics)
        losses = np.asarray(metrics["loss"], np.float64)
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            t = int(bad[0])
            raise NonFiniteLossError(
                f"training loss became {losses[t]} at epoch {epoch + 1}, step {t + 1} of "
                f"{steps_per_epoch} (global step {epoch * steps_per_epoch + t + 1}){hint}",
                epoch=epoch,
                step=epoch * steps_per_epoch + t,
                checkpoint=checkpointing.last_good() if checkpointing is not None else None,
            )
        stop = bool(on_epoch(epoch, state, metrics)) if on_epoch is not None else False
        done = epoch + 1
        if checkpointing is not None and (
            stop or done == epochs or done % checkpointing.every == 0
        ):
            extra = checkpoint_extra() if checkpoint_extra is not None else None
            checkpointing.save(state, done, extra)
        if stop:
            return EpochRun(state, done, first_step_s, stopped=done < epochs)
    return EpochRun(state, max(epochs, start_epoch), first_step_s, stopped=False)


# ------------------------------------------------------------------------------ float training
def _split(data, name: str):
    try:
        return getattr(data, f"x_{name}"), getattr(data, f"y_{name}")
    except AttributeError:
        raise TypeError(
            f"data must have x_{name} and y_{name} (a bq_jax.data.Dataset), got "
            f"{type(data).__name__}"
        ) from None


def _check_data(model, data):
    num_classes = getattr(data, "num_classes", model.num_classes)
    if num_classes != model.num_classes:
        raise ValueError(
            f"data has {num_classes} classes but the model has num_classes={model.num_classes}"
        )
    out = {}
    for split in ("train", "calibration"):
        x, y = _split(data, split)
        validate_split(
            x, y, num_classes=model.num_classes, name=split, input_shape=model.input_shape
        )
        out[split] = (np.asarray(x, np.float32), np.asarray(y, np.int32))
    return out


def train(
    model,
    data,
    config: TrainConfig,
    key: jax.Array,
    *,
    progress: bool = True,
    callback: Callable | None = None,
    checkpoint_path: str | os.PathLike | None = None,
) -> dict:
    """Trains ``model`` from scratch on ``data``'s training split; returns its variables.

    See :func:`train_with_history` (same arguments) for the procedure.

    Example:
        >>> from bq_jax.data import load_dataset
        >>> from bq_jax.models import make_model
        >>> data = load_dataset("digits")
        >>> model = make_model("mlp", num_classes=10, input_shape=(64,))
        >>> config = TrainConfig(epochs=2, batch_size=32, learning_rate=3e-3)  # default: 40
        >>> variables = train(model, data, config, jax.random.key(0), progress=False)
        >>> accuracy(model.apply_fn, variables, data.x_calibration, data.y_calibration) > 0.5
        True
    """
    variables, _ = train_with_history(
        model,
        data,
        config,
        key,
        progress=progress,
        callback=callback,
        checkpoint_path=checkpoint_path,
    )
    return variables


_HISTORY_LISTS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "calibration_epoch",
    "calibration_accuracy",
)


def train_with_history(
    model,
    data,
    config: TrainConfig,
    key: jax.Array,
    *,
    progress: bool = True,
    callback: Callable | None = None,
    checkpoint_path: str | os.PathLike | None = None,
) -> tuple[dict, dict]:
    """Trains ``model`` on ``data.x_train`` by minibatch gradient descent with optax.

    Minimises the mean softmax cross-entropy (with optional label smoothing) of
    ``model.apply_train`` (batch-norm statistics from the batch, running averages updated).
    ``key`` is split into ``(init, shuffle, step)``: the variables start at
    ``model.init(init)``, epoch ``e`` (0-based) uses the permutation
    ``jax.random.permutation(fold_in(shuffle, e), N)`` cut into ``floor(N / batch_size)``
    batches (:func:`run_epochs`), step ``t`` uses ``fold_in(step, t)`` for dropout and
    augmentation. The step ``step(state, (x, y)) -> (state, metrics)`` is jitted once and
    reused for every batch. Accuracy on ``data.x_calibration`` is measured every
    ``eval_every`` epochs and after the last one; the held-out split is never read.

    Args:
        model: a :class:`bq_jax.models.Model`.
        data: a :class:`bq_jax.data.Dataset` (or anything with ``x_train``, ``y_train``,
            ``x_calibration``, ``y_calibration``); inputs must match ``model.input_shape``.
        config: a :class:`TrainConfig`.
        key: a ``jax.random`` key; the same key gives bitwise identical variables.
        progress: show a tqdm bar (loss, accuracy, calibration accuracy).
        callback: called as ``callback(epoch, metrics, variables)`` after every epoch
            (``epoch`` 1-based, ``metrics`` the epoch's entry of the history); returning
            ``True`` stops training after that epoch.
        checkpoint_path: save the training state there after every epoch; if the file
            already holds a state of this model, config and data, training resumes from it
            (bit-identical to an uninterrupted run with the same ``key``).

    Returns:
        ``(variables, history)``. ``history`` (JSON-serialisable): ``epoch``, ``train_loss``,
        ``train_accuracy`` (per-epoch means over the steps), ``calibration_epoch``,
        ``calibration_accuracy``, ``steps``, ``steps_per_epoch``, ``step_traces`` (times the
        step was traced, counted over all trainings in this process that share it: models,
        settings and steps per epoch equal; 1 means compiled once), ``first_step_s`` (the
        first step's wall time: trace and compile unless shared, and one step),
        ``wall_time_s`` (the whole call, data checks and evaluations included).

    Raises:
        ValueError: data that does not fit the model (shape, classes, NaN/inf inputs,
            labels out of range), or ``batch_size`` larger than the training split.
        NonFiniteLossError: the loss became NaN/inf (message: the epoch and step).
        CheckpointMismatchError: ``checkpoint_path`` holds a state of another setup.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    start = time.perf_counter()
    key = _check_key(key)
    splits = _check_data(model, data)
    x_train, y_train = splits["train"]
    x_cal, y_cal = splits["calibration"]
    n = x_train.shape[0]
    if config.batch_size > n:
        raise ValueError(
            f"batch_size={config.batch_size} is larger than the training split ({n} examples)"
        )
    if config.augment and len(model.input_shape) != 3:
        raise ValueError(
            f"augment=True needs image inputs (height, width, channels); model "
            f"{model.name!r} takes {model.input_shape}"
        )
    steps_per_epoch = n // config.batch_size
    init_state, step_fn, step = _compiled_step(model, config, steps_per_epoch)
    k_init, k_shuffle, k_step = jax.random.split(key, 3)
    state = init_state(model.init(k_init), k_step)

    history: dict[str, Any] = {k: [] for k in _HISTORY_LISTS}
    checkpointing = None
    start_epoch = 0
    if checkpoint_path is not None:
        checkpointing = Checkpointing(
            path=checkpoint_path,
            model=model,
            train_config=config,
            data_fingerprint=getattr(data, "fingerprint", None),
        )
        resumed = checkpointing.resume(state)
        if resumed is not None:
            state, start_epoch, extra = resumed
            history.update({k: list(extra["history"][k]) for k in _HISTORY_LISTS})

    def on_epoch(epoch, state, metrics):
        entry = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(np.asarray(metrics["loss"], np.float64))),
            "train_accuracy": float(np.mean(np.asarray(metrics["accuracy"], np.float64))),
        }
        last = epoch + 1 == config.epochs
        if config.eval_every and ((epoch + 1) % config.eval_every == 0 or last):
            entry["calibration_accuracy"] = accuracy(model.apply_fn, state.variables, x_cal, y_cal)
            history["calibration_epoch"].append(epoch + 1)
            history["calibration_accuracy"].append(entry["calibration_accuracy"])
        for k in ("epoch", "train_loss", "train_accuracy"):
            history[k].append(entry[k])
        bar.set_postfix(
            loss=f"{entry['train_loss']:.4f}",
            acc=f"{entry['train_accuracy']:.3f}",
            **(
                {"cal_acc": f"{entry['calibration_accuracy']:.3f}"}
                if "calibration_accuracy" in entry
                else {}
            ),
        )
        return callback is not None and callback(epoch + 1, entry, state.variables) is True

    bar = tqdm(
        total=config.epochs * steps_per_epoch,
        initial=start_epoch * steps_per_epoch,
        desc=f"train {model.name}",
        disable=not progress,
        leave=False,
    )
    try:
        run = run_epochs(
            step,
            state,
            x_train,
            y_train,
            batch_size=config.batch_size,
            epochs=config.epochs,
            shuffle_key=k_shuffle,
            start_epoch=start_epoch,
            on_epoch=on_epoch,
            checkpointing=checkpointing,
            checkpoint_extra=lambda: {"history": {k: history[k] for k in _HISTORY_LISTS}},
            bar=bar,
            hint=(
                f"; lower learning_rate (now {config.learning_rate}), set max_grad_norm, or "
                "check the inputs"
            ),
        )
    finally:
        bar.close()
    variables = jax.block_until_ready(run.state.variables)
    history.update(
        steps=int(run.state.step),
        steps_per_epoch=steps_per_epoch,
        step_traces=step_fn.num_traces,
        first_step_s=run.first_step_s,
        wall_time_s=time.perf_counter() - start,
    )
    return variables, history
