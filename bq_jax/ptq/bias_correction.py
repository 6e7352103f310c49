"""Empirical bias correction (white paper, Nagel et al. 2021, section 3.3).

Weight quantization shifts the expected pre-activation output of a layer:
``E[y~] - E[y] = E[W~ x~] - E[W x]``. Empirical bias correction measures this shift on
calibration data, per output channel, and subtracts it from the layer's bias. Layers are
corrected in call order, each one with the already-corrected quantized model feeding it
(``x~``), so that every layer's mean output on the calibration set matches the float model.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from bq_jax.models.tracing import layer_structure, trace_layers
from bq_jax.ptq.checks import check_calibration
from bq_jax.ptq.paths import flatten_params, unflatten_params

__all__ = ["bias_correction", "layer_mean_errors"]


def _outputs_fn(apply_fn: Callable):
    def outputs(params, x):
        _, calls = trace_layers(apply_fn, params, x)
        return {c.name: c.outputs for c in calls}

    return jax.jit(outputs)


def _channel_mean(y, axis: int) -> jax.Array:
    y = jnp.moveaxis(y, axis, -1)
    return jnp.mean(y.reshape(-1, y.shape[-1]), axis=0)


def layer_mean_errors(apply_fn: Callable, params_float, params_quant, x) -> dict:
    """``{layer: E[y~] - E[y]}`` per output channel of every weight layer on ``x``.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> from bq_jax import ptq, quant
      >>> params_q = ptq.quantize_weights(variables, quant.QuantConfig(bits=4))
      >>> errs = layer_mean_errors(model.apply, variables, params_q, x)
      >>> {name: e.shape for name, e in errs.items()}
      {'layers_0': (8,), 'layers_2': (3,)}
    """
    x = check_calibration(x, "x")
    axes = {c.name: c.channel_axis for c in layer_structure(apply_fn, params_float, x)}
    outputs = _outputs_fn(apply_fn)
    yf, yq = outputs(params_float, x), outputs(params_quant, x)
    return {n: _channel_mean(yq[n], axes[n]) - _channel_mean(yf[n], axes[n]) for n in yf}


def bias_correction(apply_fn: Callable, params_float, params_quant, calibration_x) -> dict:
    """Subtracts the calibration-set shift ``E[W~ x~] - E[W x]`` from each layer's bias.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` (any model; ``bq_jax.models.adapt``).
      params_float: float variables dict.
      params_quant: weight-quantized variables dict with the same structure.
      calibration_x: calibration inputs (never held-out data).

    Returns:
      ``params_quant`` with corrected biases (kernels untouched, so still on their grid).

    Raises:
      ValueError: empty calibration set, or a layer without bias (fold batch norm first).

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> from bq_jax import ptq, quant
      >>> params_q = ptq.quantize_weights(variables, quant.QuantConfig(bits=4))
      >>> params_bc = bias_correction(model.apply, variables, params_q, x)
      >>> errs = layer_mean_errors(model.apply, variables, params_bc, x)
      >>> float(jnp.max(jnp.abs(errs["layers_2"]))) < 1e-5
      True
    """
    x = check_calibration(calibration_x)
    calls = {c.name: c for c in layer_structure(apply_fn, params_float, x)}
    outputs = _outputs_fn(apply_fn)
    yf = outputs(params_float, x)
    flat = flatten_params(params_quant)
    for name in yf:
        bp, axis = calls[name].layer.bias_path, calls[name].channel_axis
        if bp is None or bp not in flat:
            raise ValueError(
                f"layer {name!r} has no bias to correct; fold batch norm first or build the "
                "layer with a bias (use_bias=True)"
            )
        yq = outputs(unflatten_params(flat), x)[name]
        delta = _channel_mean(yq, axis) - _channel_mean(yf[name], axis)
        flat[bp] = flat[bp] - delta.reshape(flat[bp].shape).astype(flat[bp].dtype)
    return unflatten_params(flat)
