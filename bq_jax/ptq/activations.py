"""Activation quantization at explicit points of any JAX model (W8A8 and lower).

Quantization points are the inputs (``"input"``: the activation operand of the layer's
``dot_general`` / ``conv``) and/or outputs (``"output"``: bias included) of every weight layer,
found in the jaxpr of ``apply_fn`` (:mod:`bq_jax.models.tracing`), so no model code changes and
linen, NNX, equinox models (``bq_jax.models.adapt``) and plain functions are treated alike.
Ranges are calibrated on calibration data with the range method of a ``QuantConfig``
(``"minmax"``, ``"percentile"``, ``"mse"``, ...; white paper section 3.1: activation ranges
from a calibration set) and carried explicitly: the quantized model is

    apply_q(params_with_ranges, x) -> logits,
    params_with_ranges = {**params, "activation_qparams": {layer: {point: {"scale", "zero_point"}}}}

which keeps the ``apply_fn(params, x)`` contract (pure, jit-able, and vmappable over a
variant stack whose ranges differ too). The ``activation_qparams`` collection is removed
before the model sees the variables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from bq_jax import quant
from bq_jax.models.tracing import rewrite_layers, trace_layers
from bq_jax.ptq.checks import check_calibration

__all__ = [
    "ACTIVATION_KEY",
    "activation_quantized_apply",
    "calibrate_activations",
    "quantize_activations",
]

# Name of the collection holding the activation ranges inside the variables dict.
ACTIVATION_KEY = "activation_qparams"

_POINTS = ("input", "output")


def _check_points(points) -> tuple[str, ...]:
    if isinstance(points, str):
        points = (points,)
    points = tuple(points)
    if not points or any(p not in _POINTS for p in points):
        raise ValueError(f"points must be a non-empty subset of {_POINTS}, got {points!r}")
    return points


def _check_config(config) -> None:
    if not isinstance(config, quant.QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    if not config.is_int:
        raise ValueError(f"activation quantization supports fmt='int', got {config.fmt!r}")
    if config.rounding == "stochastic":
        raise ValueError(
            "activation quantization takes no PRNG key, so rounding='stochastic' cannot be "
            "honoured; use rounding='nearest', 'floor' or 'ceil'"
        )


def calibrate_activations(
    apply_fn: Callable,
    params,
    calibration_x,
    config,
    *,
    points: Sequence[str] = ("input",),
    batch_size: int | None = None,
) -> dict:
    """Activation ranges at the quantization points, from calibration data.

    Runs ``apply_fn`` on ``calibration_x`` (in batches of ``batch_size``), collects the
    tensors at each point over the whole calibration set and computes
    ``quant.compute_qparams(tensor, config)`` (range method from ``config``). The tensor of a
    point is viewed as rows of its last axis (``a.reshape(-1, a.shape[-1])``); a layer output
    whose channels are not last (equinox convolutions, NCHW) is moved to channels-last first.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` (any model; ``bq_jax.models.adapt``).
      params: variables dict (usually already weight-quantized, as deployed).
      calibration_x: calibration inputs (never held-out data).
      config: activation QuantConfig (``fmt="int"``; typically per-tensor, asymmetric).
      points: ``"input"`` and/or ``"output"`` of each weight layer call.
      batch_size: calibration batch size (default: all at once).

    Returns:
      ``{layer: {point: {"scale": array, "zero_point": array}}}``.

    Raises:
      ValueError: empty calibration set, bad points, non-integer format.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> a8 = quant.QuantConfig(bits=8, symmetric=False, range_method="percentile")
      >>> ranges = calibrate_activations(model.apply, variables, x, a8)
      >>> sorted(ranges), sorted(ranges["layers_0"]["input"])
      (['layers_0', 'layers_2'], ['scale', 'zero_point'])
    """
    _check_config(config)
    points = _check_points(points)
    x = check_calibration(calibration_x)
    n = x.shape[0]
    bs = n if batch_size is None else int(batch_size)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def collect(params, xb):
        _, calls = trace_layers(apply_fn, params, xb, allow_repeated=True)
        out: dict[str, dict[str, list]] = {}
        for c in calls:
            d = out.setdefault(c.name, {p: [] for p in points})
            for p in points:
                a = c.inputs if p == "input" else jnp.moveaxis(c.outputs, c.channel_axis, -1)
                d[p].append(a)
        return out

    collect = jax.jit(collect)
    parts = [collect(params, x[i : i + bs]) for i in range(0, n, bs)]
    ranges = {}
    for name in parts[0]:
        ranges[name] = {}
        for p in points:
            t = jnp.concatenate(
                [a.reshape(-1, a.shape[-1]) for part in parts for a in part[name][p]]
            )
            try:
                qp = quant.compute_qparams(t, config)
            except ValueError as err:
                raise ValueError(f"activations at the {p} of layer {name!r}: {err}") from None
            ranges[name][p] = {
                "scale": jnp.asarray(qp.scale, jnp.float32),
                "zero_point": jnp.asarray(qp.zero_point, jnp.float32),
            }
    return ranges


def activation_quantized_apply(apply_fn: Callable, config) -> Callable:
    """``apply_q(params_with_ranges, x)``: ``apply_fn`` with fake-quantized activations.

    At each calibrated point, ``a -> quant.int_fake_quant(a, scale, zero_point, qmin, qmax)``
    (``qmin, qmax`` and the rounding mode from ``config``; ``"stochastic"`` is refused: there
    is no key); the ranges are read from
    ``params_with_ranges["activation_qparams"]`` (see :func:`calibrate_activations`), so the
    function is pure. A layer without an entry is left in float. Only the layer's own read of
    its input is quantized (a skip connection reading the same tensor keeps it in float).

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> a8 = quant.QuantConfig(bits=8, symmetric=False)
      >>> ranges = calibrate_activations(model.apply, variables, x, a8)
      >>> apply_q = activation_quantized_apply(model.apply, a8)
      >>> apply_q({**variables, "activation_qparams": ranges}, x).shape
      (64, 3)
    """
    _check_config(config)
    qmin, qmax = config.qrange

    def fq(a, qp, axis=-1):
        a = jnp.moveaxis(a, axis, -1)
        s = jnp.asarray(qp["scale"], a.dtype)
        z = jnp.asarray(qp["zero_point"], a.dtype)
        s = s.reshape((1,) * (a.ndim - s.ndim) + s.shape)
        z = z.reshape((1,) * (a.ndim - z.ndim) + z.shape)
        out = quant.int_fake_quant(a, s, z, qmin=qmin, qmax=qmax, rounding=config.rounding)
        return jnp.moveaxis(out, -1, axis)

    def apply_q(variables, x):
        if ACTIVATION_KEY not in variables:
            raise ValueError(
                f"variables have no {ACTIVATION_KEY!r} collection; build them with "
                "quantize_activations or {**params, 'activation_qparams': ranges}"
            )
        ranges = variables[ACTIVATION_KEY]
        rest = {k: v for k, v in variables.items() if k != ACTIVATION_KEY}

        def inputs(name, a):
            point = ranges.get(name, {})
            return fq(a, point["input"]) if "input" in point else a

        def outputs(name, y, axis):
            point = ranges.get(name, {})
            return fq(y, point["output"], axis) if "output" in point else y

        return rewrite_layers(apply_fn, inputs=inputs, outputs=outputs)(rest, x)

    return apply_q


def quantize_activations(
    apply_fn: Callable,
    params,
    calibration_x,
    config,
    *,
    points: Sequence[str] = ("input",),
    batch_size: int | None = None,
):
    """Calibrates activation ranges and returns ``(apply_q, params_with_ranges)``.

    ``apply_q(params_with_ranges, x)`` is the activation-quantized model; combine with PTQ-W
    for W8A8: ``quantize_activations(apply_fn, quantize_weights(params, w8), x_cal, a8)``.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> from bq_jax.ptq import quantize_weights
      >>> w8, a8 = quant.QuantConfig(bits=8), quant.QuantConfig(bits=8, symmetric=False)
      >>> params_w8 = quantize_weights(variables, w8)
      >>> apply_q, params_w8a8 = quantize_activations(model.apply, params_w8, x, a8)
      >>> labels_q = jnp.argmax(apply_q(params_w8a8, x), -1)
      >>> float(jnp.mean(labels_q == jnp.argmax(model.apply(variables, x), -1))) > 0.9
      True
    """
    ranges = calibrate_activations(
        apply_fn,
        params,
        calibration_x,
        config,
        points=points,
        batch_size=batch_size,
    )
    apply_q = activation_quantized_apply(apply_fn, config)
    return apply_q, {**params, ACTIVATION_KEY: ranges}
