"""Front door for qwix (google/qwix): a qwix-quantized linen model as ``apply_fn(params, x)``.

:func:`from_qwix` takes a flax linen classifier and either qwix rules (it quantizes the model
with qwix's PTQ or QAT provider) or a model qwix has already quantized, and returns a
:class:`QwixModel` ``(apply_fn, params, provider)``: a pure ``apply_fn(params, x) -> logits``
and the variables it takes -- what :func:`bq_jax.geometry.compare_models` (or ``compare`` with
``variant_apply_fn=``) needs next to the float model::

    qm = from_qwix(module, float_vars, rules=[qwix.QuantizationRule(weight_qtype="int4")],
                   provider="ptq", sample_x=x[:1])
    res = geometry.compare_models((float_apply, float_vars), [(qm.apply_fn, qm.params)],
                                  slc, heldout_x, calibration_x)

Providers (qwix 0.1.8):

* ``"ptq"`` (``qwix.PtqProvider``): the weights are quantized once,
  ``qwix.quantize_params(float_params, abstract PTQ params)``; ``params`` holds qwix's
  ``WithAux(QArray(qvalue, scale))`` leaves (integer codes and scales). The forward pass
  dequantizes them (``qvalue * scale``) before each float matmul, so logits are
  differentiable in ``x``. With quantized activations (``act_qtype``) PTQ rounds them with
  ``jnp.round`` (derivative 0), so its input gradient is the exact derivative of the
  quantized function -- only the path through the dynamic activation scale ``absmax(x) /
  (qmax + 0.5)`` -- not a straight-through one: local radii and normals are then those of
  the piecewise-constant model.
* ``"qat"`` (``qwix.QtProvider``): fake quantization in the forward pass of the float
  weights (re-quantized every call); ``params`` are the float variables. qwix's custom VJP
  passes input gradients straight through (``dL/dx = g . Q(W)^T``), so the local geometry is
  defined also with quantized activations.

qwix's symmetric integer weights use ``scale = absmax / (qmax + 0.5)`` per output channel;
``bq_jax.quant.QuantConfig(..., granularity="per_channel", scale_convention="qwix")`` gives
the same codes (see its docstring for the near-tie caveat).

qwix is an optional dependency (extra ``bq_jax[interop]``), imported when a function here is
called.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

__all__ = [
    "QWIX_PROVIDERS",
    "QwixModel",
    "build_adapted",
    "from_qwix",
    "import_qwix",
    "is_qwix_model",
]

#: Accepted ``provider`` values of :func:`from_qwix`.
QWIX_PROVIDERS = ("ptq", "qat")


def import_qwix():
    """The ``qwix`` module, or an ImportError naming the extra that installs it."""
    try:
        return importlib.import_module("qwix")
    except ImportError as err:
        raise ImportError(
            "bq_jax.models.qwix_interop needs qwix; install it with "
            "`pip install 'bq_jax[interop]'` (or `pip install qwix`)"
        ) from err


@contextlib.contextmanager
def _quiet_qwix():
    """Runs qwix under the dtype promotion it is written for (``"standard"``: its quantized
    matmuls mix int32 and float32, which a ``jax_numpy_dtype_promotion="strict"`` session
    rejects) and silences the one deprecation qwix 0.1.8 triggers in flax 0.12
    (``nnx.VariableState``, an alias flax kept for it); nothing else is filtered."""
    with warnings.catch_warnings(), jax.numpy_dtype_promotion("standard"):
        warnings.filterwarnings(
            "ignore", message="'VariableState' was removed", category=DeprecationWarning
        )
        yield


class QwixModel(NamedTuple):
    """A qwix-quantized model as pure functions.

    ``apply_fn(params, x) -> logits[N, K]`` runs the quantized model on a batch; ``params`` is
    its variables dict (``{"params": ...}`` plus any other collections of the float
    variables); ``provider`` is ``"ptq"`` or ``"qat"``; ``quantized_activations`` says
    whether a rule quantizes activations (``act_qtype``), which changes what PTQ's input
    gradients mean (see the module docstring).
    """

    apply_fn: Callable
    params: Any
    provider: str
    quantized_activations: bool


def is_qwix_model(module) -> bool:
    """True for a linen module returned by ``qwix.quantize_model`` (no qwix import needed)."""
    return hasattr(type(module), "_unquantized_type")


def build_adapted(module, variables, options) -> tuple[Callable, Any]:
    """The ``qwix`` entry of :data:`bq_jax.models.adapt.ADAPTERS`: a module already quantized
    by qwix plus the variables it runs with (PTQ: the ``qwix.quantize_params`` output; QAT:
    the float variables) -> ``(apply_fn, variables)``. qwix runs under the dtype promotion it
    is written for (see :func:`from_qwix`)."""
    if not (hasattr(variables, "keys") and "params" in variables):
        raise ValueError(
            "a qwix-quantized module needs its variables dict with a 'params' collection "
            f"(PTQ: qwix.quantize_params output), got {type(variables).__name__}"
        )
    kwargs = dict(options.get("apply_kwargs") or {})

    def apply_fn(params, x):
        with _quiet_qwix():
            return module.apply(params, x, **kwargs)

    return apply_fn, dict(variables)


def _provider(qwix, provider: str, rules):
    if provider == "ptq":
        return qwix.PtqProvider(rules)
    return qwix.QtProvider(rules)


def from_qwix(
    module,
    variables,
    *,
    rules: Sequence | None = None,
    provider: str = "ptq",
    sample_x=None,
    quantized_variables=None,
    **call_kwargs,
) -> QwixModel:
    """A linen classifier quantized by qwix, as ``(apply_fn, params)`` for bq_jax.

    Args:
      module: a ``flax.linen.Module`` -- the float model (give ``rules``) or one already
        returned by ``qwix.quantize_model`` (``rules=None``).
      variables: the float model's variables dict (``{"params": ...}``, other collections are
        passed through unchanged).
      rules: qwix ``QuantizationRule`` s (``QtRule`` s for QAT) when ``module`` is the float
        model; None when it is already quantized.
      provider: ``"ptq"`` (``qwix.PtqProvider``: weights quantized once, see
        ``qwix.quantize_params``) or ``"qat"`` (``qwix.QtProvider``: fake quantization in the
        forward pass). For an already-quantized ``module`` it must name the provider it was
        quantized with.
      sample_x: one input batch ``[N, *input_shape]`` (values unused), needed for ``"ptq"``
        to trace qwix's abstract quantized parameters (unless ``quantized_variables`` is
        given).
      quantized_variables: for ``"ptq"``, qwix-quantized variables already made (e.g. loaded
        from a checkpoint); ``variables`` is then only used for its non-``params``
        collections.
      **call_kwargs: keyword arguments of every ``module.apply`` call (e.g. ``train=False``).

    Returns:
      :class:`QwixModel`.

    Raises:
      ImportError: qwix is not installed (names the ``bq_jax[interop]`` extra).
      ValueError / TypeError: an unknown provider, rules given for a quantized module (or
        missing for a float one), no ``sample_x`` for PTQ, or ``variables`` without a
        ``"params"`` collection.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, qwix
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         return nn.Dense(3)(x)
      >>> x = jnp.ones((2, 4))
      >>> variables = Net().init(jax.random.key(0), x)
      >>> qm = from_qwix(Net(), variables, rules=[qwix.QuantizationRule(weight_qtype=jnp.int8)],
      ...                provider="ptq", sample_x=x)
      >>> qm.apply_fn(qm.params, x).shape, qm.provider
      ((2, 3), 'ptq')
    """
    qwix = import_qwix()
    import flax.linen as nn

    if provider not in QWIX_PROVIDERS:
        raise ValueError(f"provider must be one of {QWIX_PROVIDERS}, got {provider!r}")
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a flax.linen.Module, got {type(module).__name__}")
    if not (hasattr(variables, "keys") and "params" in variables):
        raise ValueError(
            "variables must be a linen variables dict with a 'params' collection, got "
            f"{type(variables).__name__}"
        )
    quantized = is_qwix_model(module)
    if quantized and rules is not None:
        raise ValueError(
            "module is already quantized by qwix (qwix.quantize_model); pass rules=None, or "
            "pass the float module with rules"
        )
    if not quantized:
        if rules is None or len(rules) == 0:
            raise ValueError(
                "module is a float model: give qwix rules, e.g. "
                "rules=[qwix.QuantizationRule(weight_qtype=jax.numpy.int8)]"
            )
        module = qwix.quantize_model(module, _provider(qwix, provider, list(rules)))
        acts = any(getattr(r, "act_qtype", None) is not None for r in rules)
    else:
        acts = None  # not known for a module quantized elsewhere
    variables = dict(variables)

    def apply_fn(params, x):
        with _quiet_qwix():
            return module.apply(params, x, **call_kwargs)

    if provider == "qat":
        params = variables
    elif quantized_variables is not None:
        params = {**variables, **dict(quantized_variables)}
    else:
        if sample_x is None:
            raise ValueError(
                "provider='ptq' needs sample_x (one input batch) to trace qwix's quantized "
                "parameter layout, or quantized_variables"
            )
        with _quiet_qwix():
            abstract = jax.eval_shape(
                lambda x: module.init(jax.random.key(0), x, **call_kwargs), sample_x
            )
            qparams = qwix.quantize_params(variables["params"], abstract["params"])
        params = {**variables, "params": qparams}
    return QwixModel(
        apply_fn=apply_fn, params=params, provider=provider, quantized_activations=bool(acts)
    )
