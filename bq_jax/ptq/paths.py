"""Path strings for flax variables dicts: ``"params/Dense_0/kernel"``.

A flax variables dict ``{"params": ..., "batch_stats": ...}`` (what bq_jax calls "params") is
addressed by ``/``-joined key paths. These functions flatten, rebuild and update such dicts
without changing their structure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import traverse_util

__all__ = ["flatten_params", "get_leaf", "replace_leaves", "unflatten_params"]

SEP = "/"


def _check_variables(params) -> None:
    if not isinstance(params, Mapping):
        raise TypeError(
            "params must be a flax variables dict such as {'params': {...}, 'batch_stats': {...}}, "
            f"got {type(params).__name__}"
        )


def flatten_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Flattens a variables dict to ``{"params/Dense_0/kernel": leaf, ...}`` (insertion order).

    Example:
      >>> flatten_params({"params": {"Dense_0": {"kernel": 1.0}}})
      {'params/Dense_0/kernel': 1.0}
    """
    _check_variables(params)
    return traverse_util.flatten_dict(params, sep=SEP)


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_params`.

    Example:
      >>> unflatten_params({"params/Dense_0/kernel": 1.0})
      {'params': {'Dense_0': {'kernel': 1.0}}}
    """
    return traverse_util.unflatten_dict(dict(flat), sep=SEP)


def get_leaf(params: Mapping[str, Any], path: str):
    """The leaf at ``path``; ``KeyError`` naming the available paths if it does not exist."""
    flat = flatten_params(params)
    if path not in flat:
        raise KeyError(f"no leaf {path!r} in params; available: {sorted(flat)}")
    return flat[path]


def replace_leaves(params: Mapping[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` with the leaves at the given paths replaced (same structure).

    Shapes must be preserved for existing leaves; new paths are added (e.g. a bias created by
    batch-norm folding for a layer without one).

    Example:
      >>> replace_leaves({"params": {"d": {"kernel": 1.0}}}, {"params/d/kernel": 2.0})
      {'params': {'d': {'kernel': 2.0}}}
    """
    flat = flatten_params(params)
    for path, value in updates.items():
        if path in flat and jnp.shape(flat[path]) != jnp.shape(value):
            raise ValueError(
                f"replacement for {path!r} has shape {jnp.shape(value)}, "
                f"expected {jnp.shape(flat[path])}"
            )
        flat[path] = value
    return unflatten_params(flat)
