"""Checkpoints: a model's variables (or a whole training state) with the model description,
training settings and data fingerprint they belong to, written atomically and verified when
read. The one checkpoint format of float training and QAT.

File layout (version 1)::

    b"BQJAXCKPT\\n1\\n"                 magic and format version
    32 bytes                           SHA-256 of the payload
    payload                            flax msgpack of {"meta": <JSON text>, "variables": ...}
                                       or, for a training state, {"meta": ..., "state": ...}

``meta`` holds ``model`` (:meth:`bq_jax.models.Model.to_dict`, or null), ``train_config``
(the config's ``to_dict()``: :class:`TrainConfig`, ``bq_jax.qat.QATConfig``; or null),
``data_fingerprint`` (or null), ``extra`` (any JSON-serialisable value), ``bq_jax_version``
and, for a training state, ``epoch`` (epochs completed).

:func:`save_checkpoint` / :func:`load_checkpoint` store the variables of a trained model;
:func:`save_train_state` / :func:`load_train_state` store everything a training loop carries
(step, parameters, optimizer state, keys: any pytree of arrays), so that a resumed run is
bit-identical to an uninterrupted one. The checksum makes a truncated or corrupted
file fail loudly instead of loading wrong numbers. Writes go to a temporary file in the
target's directory, are flushed to disk and then ``os.replace``-d over the target, so the
target is either the old file or the complete new one, never half-written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from bq_jax._src.checks import check_int
from bq_jax.train.config import TrainConfig

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointMismatchError",
    "load_checkpoint",
    "load_train_state",
    "save_checkpoint",
    "save_train_state",
]

_MAGIC = b"BQJAXCKPT\n1\n"
_DIGEST = 32


class CheckpointError(ValueError):
    """A checkpoint file is not a bq_jax checkpoint, or is truncated or corrupted."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint belongs to a different model, training config or data set."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    # The flax variables dict ({"params": ..., "batch_stats": ...}) as JAX arrays.
    variables: dict
    # Model description (Model.to_dict()); bq_jax.models.model_from_dict rebuilds the model.
    model: dict
    # Training settings (TrainConfig.to_dict()) or None.
    train_config: dict | None
    # Fingerprint of the data the variables were trained on, or None.
    data_fingerprint: str | None
    # Anything else stored at save time (JSON value) or None.
    extra: Any
    # bq_jax version that wrote the file.
    bq_jax_version: str


def _model_dict(model) -> dict | None:
    if model is None:
        return None
    if hasattr(model, "to_dict"):
        return model.to_dict()
    if isinstance(model, Mapping):
        return json.loads(json.dumps(dict(model)))
    raise TypeError(f"model must be a bq_jax.models.Model, got {type(model).__name__}")


def _config_dict(config) -> dict | None:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return json.loads(json.dumps(dict(config)))
    if hasattr(config, "to_dict"):  # TrainConfig, bq_jax.qat.QATConfig
        return json.loads(json.dumps(config.to_dict()))
    raise TypeError(
        "train_config must be a TrainConfig (or a config with to_dict()) or None, got "
        f"{type(config).__name__}"
    )


def _flatten(tree, prefix="") -> dict:
    out = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
    else:
        out[prefix.rstrip("/")] = tree
    return out


def _differences(stored, wanted, prefix="") -> list[str]:
    """``"key: checkpoint X, requested Y"`` for every leaf where two JSON values differ."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        diffs = []
        for k in sorted(set(stored) | set(wanted)):
            name = f"{prefix}{k}"
            if k not in stored:
                diffs.append(f"{name}: missing in the checkpoint, requested {wanted[k]!r}")
            elif k not in wanted:
                diffs.append(f"{name}: checkpoint {stored[k]!r}, not in the request")
            else:
                diffs.extend(_differences(stored[k], wanted[k], f"{name}."))
        return diffs
    if stored != wanted:
        return [f"{prefix.rstrip('.') or 'value'}: checkpoint {stored!r}, requested {wanted!r}"]
    return []


def _atomic_write(path: str, chunks) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _meta_text(model, train_config, data_fingerprint, extra, **more) -> str:
    if data_fingerprint is not None and not isinstance(data_fingerprint, str):
        raise TypeError(f"data_fingerprint must be a str or None, got {data_fingerprint!r}")
    try:
        return json.dumps(
            {
                "model": _model_dict(model),
                "train_config": _config_dict(train_config),
                "data_fingerprint": data_fingerprint,
                "extra": extra,
                "bq_jax_version": _version(),
                **more,
            },
            sort_keys=True,
            allow_nan=False,
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint metadata (extra=...) must be JSON-serialisable: {e}") from e


def _check_finite(tree, what: str) -> None:
    for name, leaf in _flatten(tree).items():
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
            raise ValueError(f"{what} leaf {name!r} has NaN/inf values; refusing to save it")


def _write(path: str, meta_text: str, kind: str, state_dict) -> str:
    payload = serialization.msgpack_serialize({"meta": meta_text, kind: state_dict})
    _atomic_write(path, (_MAGIC, hashlib.sha256(payload).digest(), payload))
    return path


def save_checkpoint(
    path: str | os.PathLike,
    variables,
    *,
    model,
    train_config: TrainConfig | None,
    data_fingerprint: str | None,
    extra: Any = None,
) -> str:
    """Writes ``variables`` and what they belong to to ``path`` atomically.

    Args:
        path: target file (parent directories are created).
        variables: flax variables dict with a ``params`` entry; every leaf finite.
        model: the :class:`bq_jax.models.Model` (its ``to_dict()`` is stored).
        train_config: the :class:`TrainConfig` used, or None.
        data_fingerprint: ``Dataset.fingerprint`` of the training data, or None.
        extra: JSON-serialisable value stored as is (e.g. the training history).

    Returns:
        ``path`` as a str.

    Raises:
        ValueError: variables without ``params``, non-finite values, or ``extra`` that is
            not JSON-serialisable.

    Example:
        >>> import tempfile
        >>> from bq_jax.models import make_model
        >>> model = make_model("mlp", num_classes=3, input_shape=(4,), width=8)
        >>> variables = model.init(jax.random.key(0))
        >>> path = os.path.join(tempfile.mkdtemp(), "mlp.ckpt")
        >>> save_checkpoint(path, variables, model=model, train_config=TrainConfig(),
        ...                 data_fingerprint=None) == path
        True
    """
    path = os.fspath(path)
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError(
            "variables must be a flax variables dict with a 'params' entry, got "
            f"{type(variables).__name__}"
        )
    if model is None:
        raise TypeError("model must be a bq_jax.models.Model, got None")
    host = jax.device_get(dict(variables))
    _check_finite(host, "variables")
    meta_text = _meta_text(model, train_config, data_fingerprint, extra)
    return _write(path, meta_text, "variables", serialization.to_state_dict(host))


def _is_typed_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _state_dict(state):
    """``state`` as flax's nested state dict of numpy arrays (typed PRNG keys as key data)."""
    raw = jax.tree.map(lambda a: jax.random.key_data(a) if _is_typed_key(a) else a, state)
    return serialization.to_state_dict(jax.device_get(raw))


def save_train_state(
    path: str | os.PathLike,
    state,
    *,
    epoch: int,
    model=None,
    train_config=None,
    data_fingerprint: str | None = None,
    extra: Any = None,
) -> str:
    """Writes a training loop's whole ``state`` after ``epoch`` epochs to ``path`` atomically.

    Args:
        path: target file (parent directories are created).
        state: any pytree of arrays (NamedTuples, dicts, optax states, typed PRNG keys); every
            floating-point leaf finite.
        epoch: epochs completed (>= 0); a resumed run starts at this epoch.
        model: the :class:`bq_jax.models.Model` (its ``to_dict()`` is stored), or None.
        train_config: the run's config (``TrainConfig``, ``QATConfig``: anything with
            ``to_dict()``), or None.
        data_fingerprint: fingerprint of the training data, or None.
        extra: JSON-serialisable value stored as is (e.g. the history so far).

    Returns:
        ``path`` as a str.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "run.ckpt")
        >>> state = {"step": jnp.int32(30), "w": jnp.ones(3), "key": jax.random.key(0)}
        >>> save_train_state(path, state, epoch=3, train_config=TrainConfig()) == path
        True
    """
    path = os.fspath(path)
    epoch = check_int("epoch", epoch, 0)
    state_dict = _state_dict(state)
    _check_finite(state_dict, "state")
    meta_text = _meta_text(model, train_config, data_fingerprint, extra, epoch=epoch)
    return _write(path, meta_text, "state", state_dict)


def _version() -> str:
    import bq_jax

    return bq_jax.__version__


def _read(path: str, kind: str) -> tuple[dict, Any]:
    with open(path, "rb") as f:
        blob = f.read()
    head = len(_MAGIC)
    if not blob.startswith(_MAGIC[:9]):
        raise CheckpointError(f"{path} is not a bq_jax checkpoint (unknown file header)")
    if blob[:head] != _MAGIC:
        raise CheckpointError(
            f"{path} is a bq_jax checkpoint of an unsupported format version "
            f"(header {blob[:head]!r}, expected {_MAGIC!r})"
        )
    digest, payload = blob[head : head + _DIGEST], blob[head + _DIGEST :]
    if len(digest) != _DIGEST or hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(
            f"{path} is truncated or corrupted (checksum mismatch, {len(blob)} bytes); delete "
            "it and save / train again"
        )
    try:
        raw = serialization.msgpack_restore(payload)
        meta = json.loads(raw["meta"])
    except Exception as e:  # the checksum matched, so this is a writer of another format
        raise CheckpointError(f"{path} has an unreadable payload: {e}") from e
    if kind not in raw:
        reader = {"variables": "load_checkpoint", "state": "load_train_state"}
        other = next((k for k in reader if k in raw), None)
        hint = f"; read it with {reader[other]}" if other else ""
        raise CheckpointError(f"{path} holds no {kind} (it is not a {kind} checkpoint){hint}")
    return meta, raw[kind]


def _meta_problems(meta, model, train_config, data_fingerprint) -> list[str]:
    """Differences between what a checkpoint stores and what the caller expects."""
    problems = []
    if model is not None:
        problems += [f"model {d}" for d in _differences(meta.get("model"), _model_dict(model))]
    if train_config is not None:
        problems += [
            f"train_config {d}"
            for d in _differences(meta.get("train_config"), _config_dict(train_config))
        ]
    if data_fingerprint is not None and meta.get("data_fingerprint") != data_fingerprint:
        problems.append(
            f"data_fingerprint: checkpoint {meta.get('data_fingerprint')!r}, requested "
            f"{data_fingerprint!r} (the data or its splits changed)"
        )
    return problems


def _leaf_problems(what: str, expected: dict, got: dict, *, dtypes: bool = True) -> list[str]:
    """Missing, unexpected, reshaped (and with ``dtypes`` retyped) leaves of two flattened
    trees."""
    problems = []
    for name in sorted(set(expected) | set(got)):
        if name not in got:
            problems.append(f"{what}: {name} missing in the checkpoint")
        elif name not in expected:
            problems.append(f"{what}: {name} in the checkpoint is not in the request")
        else:
            want, have = expected[name], np.asarray(got[name])
            if tuple(have.shape) != tuple(want.shape):
                problems.append(
                    f"{what}: {name} has shape {have.shape} in the checkpoint, the request needs "
                    f"{tuple(want.shape)}"
                )
            elif dtypes and have.dtype != np.dtype(want.dtype):
                problems.append(
                    f"{what}: {name} has dtype {have.dtype} in the checkpoint, the request needs "
                    f"{np.dtype(want.dtype)}"
                )
    return problems


def _mismatch(path: str, problems: list[str]) -> CheckpointMismatchError:
    return CheckpointMismatchError(
        f"checkpoint {path} does not match this model, config and data (it was written by "
        "another config, model or data set; use another path, or delete it to start over):\n  "
        + "\n  ".join(problems)
    )


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model=None,
    train_config: TrainConfig | None = None,
    data_fingerprint: str | None = None,
) -> Checkpoint:
    """Reads a checkpoint written by :func:`save_checkpoint`, checking what it belongs to.

    Each of ``model``, ``train_config``, ``data_fingerprint`` that is given must match what
    the file stores; for ``model`` the variables' paths and shapes must also match
    ``model.init``'s. Values are restored bit for bit.

    Args:
        path: checkpoint file.
        model: expected :class:`bq_jax.models.Model`, or None to skip the check.
        train_config: expected :class:`TrainConfig`, or None to skip the check.
        data_fingerprint: expected ``Dataset.fingerprint``, or None to skip the check.

    Returns:
        A :class:`Checkpoint` (``.variables`` holds JAX arrays).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: not a checkpoint, truncated or corrupted (checksum mismatch).
        CheckpointMismatchError: the model description, training settings, data fingerprint
            or variable shapes differ; the message lists each difference.

    Example:
        >>> import tempfile
        >>> from bq_jax.models import make_model
        >>> model = make_model("mlp", num_classes=3, input_shape=(4,), width=8)
        >>> path = os.path.join(tempfile.mkdtemp(), "mlp.ckpt")
        >>> _ = save_checkpoint(path, model.init(jax.random.key(0)), model=model,
        ...                     train_config=None, data_fingerprint=None)
        >>> ckpt = load_checkpoint(path, model=model)
        >>> model.apply_fn(ckpt.variables, jnp.zeros((2, 4))).shape
        (2, 3)
        >>> other = make_model("mlp", num_classes=3, input_shape=(4,), width=16)
        >>> load_checkpoint(path, model=other)
        Traceback (most recent call last):
        ...
        bq_jax.train.checkpoint.CheckpointMismatchError: checkpoint ... does not match ...
    """
    path = os.fspath(path)
    meta, raw_variables = _read(path, "variables")
    problems = _meta_problems(meta, model, train_config, data_fingerprint)
    if not problems and model is not None:
        expected = _flatten(jax.eval_shape(model.init, jax.random.key(0)))
        problems = _leaf_problems("variables", expected, _flatten(raw_variables), dtypes=False)
    if problems:
        raise _mismatch(path, problems)
    variables = jax.tree.map(jnp.asarray, raw_variables)
    return Checkpoint(
        variables=variables,
        model=meta.get("model"),
        train_config=meta.get("train_config"),
        data_fingerprint=meta.get("data_fingerprint"),
        extra=meta.get("extra"),
        bq_jax_version=meta.get("bq_jax_version", ""),
    )


def load_train_state(
    path: str | os.PathLike,
    template,
    *,
    model=None,
    train_config=None,
    data_fingerprint: str | None = None,
) -> tuple[Any, dict]:
    """Reads a training state written by :func:`save_train_state` into the structure of
    ``template`` (e.g. the freshly initialised state of the same setup).

    Each of ``model``, ``train_config``, ``data_fingerprint`` that is given must match what
    the file stores, and every leaf of the state must have the template's path, shape and
    dtype. Values are restored bit for bit.

    Args:
        path: checkpoint file.
        template: a pytree of the state's structure (arrays or ``jax.ShapeDtypeStruct``).
        model: expected :class:`bq_jax.models.Model`, or None to skip the check.
        train_config: expected config (anything with ``to_dict()``), or None to skip it.
        data_fingerprint: expected data fingerprint, or None to skip the check.

    Returns:
        ``(state, meta)``: the state (JAX arrays, typed keys where the template has them) and
        the stored metadata ``{"epoch", "model", "train_config", "data_fingerprint", "extra",
        "bq_jax_version"}``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: not a training-state checkpoint, truncated or corrupted.
        CheckpointMismatchError: another model, config, data set or state structure; the
            message lists each difference.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "run.ckpt")
        >>> state = {"step": jnp.int32(30), "w": jnp.arange(3.0), "key": jax.random.key(0)}
        >>> _ = save_train_state(path, state, epoch=3, extra={"note": "after 3 epochs"})
        >>> template = {"step": jnp.int32(0), "w": jnp.zeros(3), "key": jax.random.key(1)}
        >>> restored, meta = load_train_state(path, template)
        >>> meta["epoch"], restored["w"].tolist(), bool(restored["key"] == state["key"])
        (3, [0.0, 1.0, 2.0], True)
    """
    path = os.fspath(path)
    meta, raw_state = _read(path, "state")
    problems = _meta_problems(meta, model, train_config, data_fingerprint)
    if not problems:
        expected = _flatten(
            serialization.to_state_dict(
                jax.tree.map(
                    lambda a: jax.eval_shape(jax.random.key_data, a) if _is_typed_key(a) else a,
                    template,
                )
            )
        )
        problems = _leaf_problems("state", expected, _flatten(raw_state))
    if problems:
        raise _mismatch(path, problems)
    restored = serialization.from_state_dict(template, raw_state)
    state = jax.tree.map(
        lambda t, a: (
            jax.random.wrap_key_data(a, impl=jax.random.key_impl(t))
            if _is_typed_key(t)
            else jnp.asarray(a)
        ),
        template,
        restored,
    )
    meta = {
        "epoch": meta.get("epoch"),
        "model": meta.get("model"),
        "train_config": meta.get("train_config"),
        "data_fingerprint": meta.get("data_fingerprint"),
        "extra": meta.get("extra"),
        "bq_jax_version": meta.get("bq_jax_version", ""),
    }
    return state, meta
