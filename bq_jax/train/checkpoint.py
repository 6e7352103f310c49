"""Checkpoints: a model's variables with the model description, training settings and data
fingerprint they belong to, written atomically and verified when read.

File layout (version 1)::

    b"BQJAXCKPT\\n1\\n"                 magic and format version
    32 bytes                           SHA-256 of the payload
    payload                            flax msgpack of {"meta": <JSON text>, "variables": ...}

``meta`` holds ``model`` (:meth:`bq_jax.models.Model.to_dict`), ``train_config``
(:meth:`TrainConfig.to_dict` or null), ``data_fingerprint`` (or null), ``extra`` (any
JSON-serialisable value) and ``bq_jax_version``. The checksum makes a truncated or corrupted
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

from bq_jax.train.config import TrainConfig

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointMismatchError",
    "load_checkpoint",
    "save_checkpoint",
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


def _model_dict(model) -> dict:
    if hasattr(model, "to_dict"):
        return model.to_dict()
    if isinstance(model, Mapping):
        return json.loads(json.dumps(dict(model)))
    raise TypeError(f"model must be a bq_jax.models.Model, got {type(model).__name__}")


def _config_dict(config) -> dict | None:
    if config is None:
        return None
    if isinstance(config, TrainConfig):
        return json.loads(json.dumps(config.to_dict()))
    if isinstance(config, Mapping):
        return json.loads(json.dumps(dict(config)))
    raise TypeError(f"train_config must be a TrainConfig or None, got {type(config).__name__}")


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
        >>> save_checkpoint("/tmp/m.ckpt", variables, model=model,  # doctest: +SKIP
        ...                 train_config=config, data_fingerprint=data.fingerprint)
    """
    path = os.fspath(path)
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError(
            "variables must be a flax variables dict with a 'params' entry, got "
            f"{type(variables).__name__}"
        )
    if data_fingerprint is not None and not isinstance(data_fingerprint, str):
        raise TypeError(f"data_fingerprint must be a str or None, got {data_fingerprint!r}")
    flat = _flatten(jax.device_get(dict(variables)))
    for name, leaf in flat.items():
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
            raise ValueError(f"variables leaf {name!r} has NaN/inf values; refusing to save it")
    try:
        meta_text = json.dumps(
            {
                "model": _model_dict(model),
                "train_config": _config_dict(train_config),
                "data_fingerprint": data_fingerprint,
                "extra": extra,
                "bq_jax_version": _version(),
            },
            sort_keys=True,
            allow_nan=False,
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint metadata (extra=...) must be JSON-serialisable: {e}") from e
    state = serialization.to_state_dict(jax.device_get(dict(variables)))
    payload = serialization.msgpack_serialize({"meta": meta_text, "variables": state})
    _atomic_write(path, (_MAGIC, hashlib.sha256(payload).digest(), payload))
    return path


def _version() -> str:
    import bq_jax

    return bq_jax.__version__


def _read(path: str) -> tuple[dict, Any]:
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
        variables = raw["variables"]
    except Exception as e:  # the checksum matched, so this is a writer of another format
        raise CheckpointError(f"{path} has an unreadable payload: {e}") from e
    return meta, variables


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
        >>> ckpt = load_checkpoint("/tmp/m.ckpt", model=model)  # doctest: +SKIP
        >>> model.apply_fn(ckpt.variables, x)  # doctest: +SKIP
    """
    path = os.fspath(path)
    meta, raw_variables = _read(path)
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
    if not problems and model is not None:
        expected = _flatten(jax.eval_shape(model.init, jax.random.key(0)))
        got = _flatten(raw_variables)
        for name in sorted(set(expected) | set(got)):
            if name not in got:
                problems.append(f"variables: {name} missing in the checkpoint")
            elif name not in expected:
                problems.append(f"variables: {name} in the checkpoint is not in the model")
            elif tuple(np.shape(got[name])) != tuple(expected[name].shape):
                problems.append(
                    f"variables: {name} has shape {np.shape(got[name])} in the checkpoint, the "
                    f"model needs {expected[name].shape}"
                )
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not match the request:\n  " + "\n  ".join(problems)
        )
    variables = jax.tree.map(jnp.asarray, raw_variables)
    return Checkpoint(
        variables=variables,
        model=meta.get("model"),
        train_config=meta.get("train_config"),
        data_fingerprint=meta.get("data_fingerprint"),
        extra=meta.get("extra"),
        bq_jax_version=meta.get("bq_jax_version", ""),
    )
