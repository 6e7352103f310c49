"""Finding the layers of any flax linen model through ``apply_fn`` alone.

bq_jax only knows a model as ``apply_fn(params, x) -> logits``. For linen models, the calls
of its Dense / Conv / BatchNorm sub-modules are visible through
:func:`flax.linen.intercept_methods`: running ``apply_fn`` inside the interceptor records
(or rewrites) each call. This is how PTQ finds layer inputs for AdaRound and bias
correction, conv/BN pairs for folding, and the points where activations are quantized.

A layer is named by its module path joined with ``/`` (``"Dense_0"``, ``"Block_0/Conv_1"``);
its kernel lives at ``"params/<name>/kernel"``.

The interceptor only sees calls made while ``apply_fn`` is traced or run; an ``apply_fn`` that
was already compiled with ``jax.jit`` replays its cached computation and hides them, so pass
the un-jitted function (a clear ``ValueError`` says so when no layer is seen).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax

__all__ = [
    "LINEAR_TYPES",
    "LayerCall",
    "intercept_layers",
    "kernel_path",
    "layer_outputs",
    "layer_structure",
    "trace_layers",
]

# Module types whose inputs/outputs are the quantization points of a layer.
LINEAR_TYPES: tuple[type, ...] = (nn.Dense, nn.Conv)


def kernel_path(name: str, leaf: str = "kernel") -> str:
    """``"params/<name>/<leaf>"``, the variables path of a layer's weight.

    Example:
      >>> kernel_path("Dense_0")
      'params/Dense_0/kernel'
    """
    return f"params/{name}/{leaf}"


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """One recorded sub-module call.

    Attributes:
      name: module path joined with ``/`` (``"Dense_0"``).
      module: an unbound clone of the module (``module.apply({"params": p}, x)`` re-runs it).
      inputs: the first positional argument of the call.
      outputs: what the call returned.
      kwargs: keyword arguments of the call.
      source: index (in the call list) of the recorded call whose output is this call's
        input, or None when the input was computed otherwise.
    """

    name: str
    module: nn.Module
    inputs: Any
    outputs: Any
    kwargs: dict
    source: int | None = None


def _name(module: nn.Module) -> str:
    return "/".join(str(p) for p in module.path)


def _no_layers_error(layer_types) -> ValueError:
    names = ", ".join(t.__name__ for t in layer_types)
    return ValueError(
        f"apply_fn made no call to a flax linen {names} module visible to "
        "nn.intercept_methods; pass the un-jitted apply_fn of a linen model "
        "(a function already compiled with jax.jit hides its module calls)"
    )


def trace_layers(
    apply_fn: Callable,
    params,
    x,
    *,
    layer_types: Sequence[type] = LINEAR_TYPES,
    allow_repeated: bool = False,
) -> tuple[Any, list[LayerCall]]:
    """Runs ``apply_fn(params, x)`` and records every call of a module of ``layer_types``.

    Works eagerly and under ``jax.jit`` / ``vmap`` tracing (records then hold tracers, to be
    returned from the traced function).

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` of a linen model (not pre-jitted).
      params: flax variables dict.
      x: a batch of inputs.
      layer_types: module classes to record (subclasses included).
      allow_repeated: allow a module to be called more than once (weight sharing); when False
        a repeated call raises ``ValueError``.

    Returns:
      ``(logits, calls)`` with ``calls`` in call order.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> logits, calls = trace_layers(model.apply, variables, x)
      >>> [c.name for c in calls], calls[1].inputs.shape
      (['layers_0', 'layers_2'], (64, 8))
    """
    layer_types = tuple(layer_types)
    calls: list[LayerCall] = []
    produced: dict[int, int] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, layer_types) and args:
            name = _name(module)
            if not allow_repeated and any(c.name == name for c in calls):
                raise ValueError(
                    f"module {name!r} is called more than once in one forward pass (weight "
                    "sharing); per-layer PTQ needs one call per layer"
                )
            clone = module.clone(parent=None, name=None)
            source = produced.get(id(args[0]))
            produced[id(out)] = len(calls)
            calls.append(LayerCall(name, clone, args[0], out, dict(kwargs), source))
        return out

    with nn.intercept_methods(interceptor):
        logits = apply_fn(params, x)
    if not calls:
        raise _no_layers_error(layer_types)
    return logits, calls


def layer_structure(
    apply_fn: Callable,
    params,
    x,
    *,
    layer_types: Sequence[type] = LINEAR_TYPES,
    allow_repeated: bool = False,
) -> list[LayerCall]:
    """The recorded calls of :func:`trace_layers` computed abstractly (``jax.eval_shape``).

    Nothing is compiled or run: ``inputs`` / ``outputs`` are ``jax.ShapeDtypeStruct``. Use it
    to find layers, their order, shapes and producer links (``source``) cheaply.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> [c.outputs.shape for c in layer_structure(model.apply, variables, x)]
      [(64, 8), (64, 3)]
    """
    box: list[list[LayerCall]] = []

    def run(params, x):
        logits, calls = trace_layers(
            apply_fn, params, x, layer_types=layer_types, allow_repeated=allow_repeated
        )
        box.append(calls)
        return logits, [(c.inputs, c.outputs) for c in calls]

    _, shapes = jax.eval_shape(run, params, x)
    return [
        dataclasses.replace(c, inputs=i, outputs=o)
        for c, (i, o) in zip(box[0], shapes, strict=True)
    ]


def intercept_layers(
    apply_fn: Callable,
    rewrite: Callable[[str, nn.Module, Callable, tuple, dict], Any],
    *,
    layer_types: Sequence[type] = LINEAR_TYPES,
) -> Callable:
    """A new ``apply_fn`` whose calls of ``layer_types`` modules go through ``rewrite``.

    ``rewrite(name, module, next_fun, args, kwargs)`` must return the call's result; it may
    change the inputs (``next_fun(*new_args, **kwargs)``), the output, or skip the call.
    The returned function is pure when ``rewrite`` is, so it can be jitted and vmapped.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> double_inputs = intercept_layers(
      ...     model.apply, lambda name, m, f, a, kw: f(2 * a[0], *a[1:], **kw))
      >>> double_inputs(variables, x).shape
      (64, 3)
    """
    layer_types = tuple(layer_types)

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, layer_types) and args:
            return rewrite(_name(module), module, next_fun, args, kwargs)
        return next_fun(*args, **kwargs)

    def new_apply_fn(params, x):
        with nn.intercept_methods(interceptor):
            return apply_fn(params, x)

    return new_apply_fn


def layer_outputs(apply_fn: Callable, params, x, names: Sequence[str] | None = None) -> dict:
    """``{name: output}`` of the Dense/Conv layers (pre-activation), in call order."""
    _, calls = trace_layers(apply_fn, params, x)
    out = {c.name: c.outputs for c in calls}
    if names is not None:
        missing = [n for n in names if n not in out]
        if missing:
            raise ValueError(f"layers {missing} not found; the model calls {list(out)}")
        out = {n: out[n] for n in names}
    return out
