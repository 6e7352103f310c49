"""One front door for models from other code: ``adapt(model) -> Adapted``.

Everything in bq_jax knows a model only as ``apply_fn(params, x) -> logits`` with ``params`` a
nested dict of arrays (paths like ``"params/Dense_0/kernel"`` select leaves in PTQ rules).
:func:`adapt` turns a model written with

* **flax linen** -- a ``nn.Module`` plus its variables dict (or a :class:`bq_jax.models.Model`
  plus its variables): ``apply_fn`` is ``module.apply``;
* **flax NNX** -- an ``nnx.Module`` (its variables are taken with ``nnx.split``): ``params``
  is ``{"params": <nnx.Param values>, "batch_stats": <nnx.BatchStat values>}`` as plain
  nested dicts (``nnx.State.to_pure_dict()``, keys as strings); ``apply_fn`` merges them back
  into the module, puts the copy in eval mode (``.eval()``: batch norm uses its running
  statistics, dropout is off) and calls it;
* **equinox** -- an ``eqx.Module`` taking one example: its inexact array leaves become
  ``{"params": {<attribute path>: ...}}`` (``"params/layers/0/weight"``); ``apply_fn``
  rebuilds the module (in inference mode) and ``vmap``-s it over the batch. Stateful layers
  (``eqx.nn.BatchNorm``, which reads ``eqx.nn.State``) are refused: their statistics live
  outside the module;
* **qwix** -- a linen module returned by ``qwix.quantize_model`` plus the variables it runs
  with (PTQ provider: the ``qwix.quantize_params`` output; QAT provider: the float
  variables), run as qwix is written to run (:mod:`bq_jax.models.qwix_interop`, whose
  :func:`~bq_jax.models.qwix_interop.from_qwix` also quantizes a float linen model by rules);
* a plain function ``apply_fn(params, x)`` plus its params,

into an :class:`Adapted`: the pure, jit-able ``apply_fn``, its ``params`` and the weight
``layers`` found in the jaxpr (:mod:`bq_jax.models.tracing`) with the **layout** of each
kernel, i.e. which axis is the output channel (linen / NNX ``(in, out)`` and HWIO: ``-1``;
equinox ``(out, in)`` and ``(O, I, H, W)``: ``0``). ``adapted.layouts`` feeds
``ptq.quantize_weights(adapted.params, spec, layouts=adapted.layouts)`` so per-channel scales
are taken per OUTPUT channel whatever the framework.

New frameworks are one :class:`Adapter` entry in :data:`ADAPTERS` (or
:func:`register_adapter`): a type check and a builder returning ``(apply_fn, params)``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from bq_jax.models import qwix_interop
from bq_jax.models.model import Model
from bq_jax.models.tracing import Layer, find_layers, leaf_paths

__all__ = [
    "ADAPTERS",
    "Adapted",
    "Adapter",
    "adapt",
    "register_adapter",
]

# The extra that installs the optional frameworks (pip install "bq_jax[interop]").
INTEROP_EXTRA = "interop"


@dataclasses.dataclass(frozen=True, eq=False)
class Adapted:
    """A model as bq_jax sees it.

    Attributes:
      apply_fn: ``apply_fn(params, x[N, ...]) -> logits[N, K]``; pure, jit-able, and
        vmappable over a stack of params (``geometry.sweep_labels``).
      params: nested dict of arrays (``{"params": {...}, ...}``).
      layers: the weight layers in call order (:class:`bq_jax.models.tracing.Layer`: name,
        kernel and bias paths, kind, output / input axis of the kernel); ``None`` when
        :func:`adapt` got no ``sample_x``.
      framework: ``"linen"``, ``"nnx"``, ``"equinox"``, ``"function"`` (or a registered name).
    """

    apply_fn: Callable
    params: dict
    layers: tuple[Layer, ...] | None
    framework: str

    @property
    def layouts(self) -> dict[str, int]:
        """``{kernel_path: output_axis}`` for ``ptq.quantize_weights(..., layouts=...)``."""
        if self.layers is None:
            raise ValueError(
                "the layers of this model are unknown: call adapt(model, ..., sample_x=x) with a "
                "batch of inputs so its layers (and their kernel layouts) can be traced"
            )
        return {layer.kernel_path: layer.output_axis for layer in self.layers}


@dataclasses.dataclass(frozen=True)
class Adapter:
    """One entry of the adapter table.

    Attributes:
      name: framework name (``Adapted.framework``).
      accepts: what it accepts, for the error listing accepted types.
      matches: ``matches(model) -> bool``.
      build: ``build(model, variables, options) -> (apply_fn, params)``; ``options`` are the
        keyword options of :func:`adapt` (``apply_kwargs``).
    """

    name: str
    accepts: str
    matches: Callable[[Any], bool]
    build: Callable[[Any, Any, Mapping[str, Any]], tuple[Callable, dict]]


# ----------------------------------------------------------------------------- helpers


def _from_module(model, prefix: str) -> bool:
    """True when a class of ``model``'s MRO is defined in package ``prefix`` (no import)."""
    return any(
        (c.__module__ or "").split(".")[0] == prefix.split(".")[0]
        and (c.__module__ or "").startswith(prefix)
        for c in type(model).__mro__
    )


def _require(module: str, framework: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"adapting a {framework} model needs the {module!r} package, which is not "
            f"installed: pip install 'bq_jax[{INTEROP_EXTRA}]' (the {INTEROP_EXTRA} extra)"
        ) from err


def _as_dict(tree) -> dict:
    """A (possibly frozen) variables mapping as plain nested dicts with string keys."""
    if isinstance(tree, Mapping):
        return {str(k): _as_dict(v) for k, v in tree.items()}
    return tree


def _set_path(tree: dict, parts, value) -> None:
    for p in parts[:-1]:
        tree = tree.setdefault(p, {})
    tree[parts[-1]] = value


def _get_path(tree, parts):
    for p in parts:
        tree = tree[p]
    return tree


def _key_str(k) -> str | None:
    """String of one key of a tree path; ``None`` for NNX's trailing ``.value``."""
    if hasattr(k, "key"):
        return str(k.key)
    if hasattr(k, "idx"):
        return str(k.idx)
    if hasattr(k, "name"):
        return None if k.name == "value" else str(k.name)
    return str(k)


def _leaf_parts(tree) -> tuple[list[tuple[str, ...]], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    parts = [tuple(s for s in map(_key_str, path) if s is not None) for path, _ in flat]
    return parts, treedef


def _rebuilder(tree, collection: str):
    """``(nested dict of tree's leaves, fn(variables) -> tree)`` keyed by attribute path."""
    parts, treedef = _leaf_parts(tree)
    nested: dict = {}
    for p, leaf in zip(parts, jax.tree.leaves(tree), strict=True):
        _set_path(nested, p, leaf)

    def rebuild(variables):
        sub = variables[collection]
        return jax.tree.unflatten(treedef, [_get_path(sub, p) for p in parts])

    return nested, rebuild


def _check_variables(variables, framework: str) -> dict:
    if variables is None:
        raise ValueError(
            f"a {framework} model needs its variables: adapt(model, variables) (e.g. the dict "
            "returned by model.init)"
        )
    if not isinstance(variables, Mapping):
        raise TypeError(
            f"variables of a {framework} model must be a mapping such as {{'params': ...}}, "
            f"got {type(variables).__name__}"
        )
    return _as_dict(variables)


def _no_variables(variables, framework: str) -> None:
    if variables is not None:
        raise ValueError(
            f"a {framework} module carries its own variables; call adapt(module) without variables"
        )


# ----------------------------------------------------------------------------- builders


def _is_model(m) -> bool:
    return isinstance(m, Model)


def _build_model(model: Model, variables, options):
    return model.apply_fn, _check_variables(variables, "bq_jax.models.Model")


def _is_linen(m) -> bool:
    import flax.linen as nn

    return isinstance(m, nn.Module)


def _build_linen(module, variables, options):
    variables = _check_variables(variables, "flax linen")
    kwargs = dict(options.get("apply_kwargs") or {})

    def apply_fn(params, x):
        return module.apply(params, x, **kwargs)

    return apply_fn, variables


def _is_nnx(m) -> bool:
    from flax import nnx

    return isinstance(m, nnx.Module)


def _build_nnx(module, variables, options):
    from flax import nnx

    _no_variables(variables, "flax NNX")
    graphdef, params, stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    params_dict, rebuild_params = _rebuilder(params, "params")
    out = {"params": params_dict}
    rebuild_stats = None
    if jax.tree.leaves(stats):
        out["batch_stats"], rebuild_stats = _rebuilder(stats, "batch_stats")

    def apply_fn(variables, x):
        states = [rebuild_params(variables)]
        if rebuild_stats is not None:
            states.append(rebuild_stats(variables))
        else:
            states.append(stats)
        m = nnx.merge(graphdef, *states, rest)
        m.eval()
        return m(x)

    return apply_fn, out


def _is_equinox(m) -> bool:
    return _from_module(m, "equinox")


def _build_equinox(module, variables, options):
    eqx = _require("equinox", "equinox")
    _no_variables(variables, "equinox")
    stateful = [
        type(m).__name__
        for m in jax.tree.leaves(module, is_leaf=lambda m: isinstance(m, eqx.nn.StateIndex))
        if isinstance(m, eqx.nn.StateIndex)
    ]
    if stateful:
        raise ValueError(
            "this equinox model has stateful layers (eqx.nn.StateIndex, e.g. eqx.nn.BatchNorm): "
            "their statistics live in an eqx.nn.State passed beside x, which apply_fn(params, x) "
            "cannot carry; fold the batch norm into the preceding layer before adapting"
        )
    module = eqx.nn.inference_mode(module, True)
    arrays, static = eqx.partition(module, eqx.is_inexact_array)
    params_dict, rebuild = _rebuilder(arrays, "params")

    def apply_fn(variables, x):
        m = eqx.combine(rebuild(variables), static)
        return jax.vmap(m)(x)

    return apply_fn, {"params": params_dict}


def _is_function(m) -> bool:
    return callable(m) and not isinstance(m, type)


def _build_function(fn, variables, options):
    if variables is None:
        raise ValueError("a plain apply_fn needs its params: adapt(apply_fn, params)")
    return fn, variables


#: The adapter table, tried in order: the first whose ``matches`` is true builds the model.
#: More specific entries first (a bq_jax Model wraps a linen module; a qwix-quantized linen
#: module belongs before plain linen).
ADAPTERS: list[Adapter] = [
    Adapter(
        "qwix",
        "a linen module quantized by qwix.quantize_model + the variables it runs with",
        qwix_interop.is_qwix_model,
        qwix_interop.build_adapted,
    ),
    Adapter("linen", "bq_jax.models.Model + variables", _is_model, _build_model),
    Adapter("linen", "flax.linen.Module + variables", _is_linen, _build_linen),
    Adapter("nnx", "flax.nnx.Module", _is_nnx, _build_nnx),
    Adapter("equinox", "equinox.Module (one example per call)", _is_equinox, _build_equinox),
    Adapter("function", "a callable apply_fn(params, x) + params", _is_function, _build_function),
]


def register_adapter(adapter: Adapter, *, before: str | None = None) -> None:
    """Adds ``adapter`` to :data:`ADAPTERS` (before the first entry named ``before``, else last).

    Example:
      >>> class Toy:  # a framework whose models hold one weight matrix
      ...     def __init__(self, w): self.w = w
      >>> def build(model, variables, options):
      ...     return (lambda p, x: x @ p["params"]["w"]), {"params": {"w": model.w}}
      >>> entry = Adapter("toy", "Toy", lambda m: isinstance(m, Toy), build)
      >>> register_adapter(entry, before="function")
      >>> adapt(Toy(jnp.ones((3, 2))), sample_x=jnp.ones((4, 3))).layers[0].kernel_path
      'params/w'
      >>> ADAPTERS.remove(entry)
    """
    if not isinstance(adapter, Adapter):
        raise TypeError(f"adapter must be an Adapter, got {type(adapter).__name__}")
    names = [a.name for a in ADAPTERS]
    if before is None:
        ADAPTERS.append(adapter)
    elif before in names:
        ADAPTERS.insert(names.index(before), adapter)
    else:
        raise ValueError(f"no adapter named {before!r}; adapters: {names}")


def adapt(
    model,
    variables=None,
    *,
    sample_x=None,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> Adapted:
    """Turns a linen, NNX, equinox model (or a plain function) into an :class:`Adapted`.

    Args:
      model: a ``flax.linen.Module`` or :class:`bq_jax.models.Model` (with ``variables``),
        a ``flax.nnx.Module``, an ``equinox.Module`` taking one example, or a function
        ``apply_fn(params, x)`` (with ``variables`` = its params).
      variables: the variables dict of a linen module / the params of a function; ``None``
        for NNX and equinox modules (they carry their own).
      sample_x: a batch of inputs ``x[N, ...]`` (only its shape and dtype are used) to find
        the weight layers and their layouts; without it ``layers`` is ``None``.
      apply_kwargs: keyword arguments of a linen ``module.apply`` (e.g. ``{"train": False}``).

    Returns:
      :class:`Adapted`.

    Raises:
      TypeError: an unknown model type (the message lists what is accepted).
      ImportError: the model's framework is not installed (names the ``interop`` extra).
      ValueError: missing or superfluous variables, a stateful equinox model.

    Example:
      >>> from flax import nnx
      >>> class MLP(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.hidden, self.out = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.out(nnx.relu(self.hidden(x)))
      >>> adapted = adapt(MLP(nnx.Rngs(0)), sample_x=jnp.ones((2, 4)))
      >>> adapted.framework, adapted.layouts
      ('nnx', {'params/hidden/kernel': -1, 'params/out/kernel': -1})
      >>> adapted.apply_fn(adapted.params, jnp.ones((5, 4))).shape
      (5, 3)
    """
    options = {"apply_kwargs": apply_kwargs}
    for entry in ADAPTERS:
        if entry.matches(model):
            apply_fn, params = entry.build(model, variables, options)
            break
    else:
        accepted = "; ".join(a.accepts for a in ADAPTERS)
        raise TypeError(
            f"cannot adapt a {type(model).__module__}.{type(model).__qualname__}; accepted: "
            f"{accepted}"
        )
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a nested dict of arrays, got {type(params).__name__}")
    paths = leaf_paths(params)
    bad = [
        p
        for p, leaf in zip(paths, jax.tree.leaves(params), strict=True)
        if not hasattr(leaf, "shape")
    ]
    if bad:
        raise TypeError(f"params leaves must be arrays; not arrays: {bad[:5]}")
    layers = None
    if sample_x is not None:
        layers = find_layers(apply_fn, params, jnp.asarray(sample_x))
    return Adapted(apply_fn=apply_fn, params=params, layers=layers, framework=entry.name)
