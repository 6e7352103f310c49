"""PTQ-W: post-training quantization of the weights of a variables dict.

``quantize_weights(params, spec)`` fake-quantizes weight leaves (quantize then dequantize,
so the result is a float variables dict with the same structure whose kernels lie on their
quantization grid). What gets quantized is chosen by path rules:

* ``spec`` -- one :class:`bq_jax.quant.QuantConfig` for every targeted leaf;
* ``rules`` -- an ordered sequence of ``(regex, QuantConfig | None)``; ``None`` keeps the
  matched leaves in float. A rule's regex is searched (``re.search``) in the path string,
  e.g. ``"params/Dense_0/kernel"``.

Only leaves whose path matches ``targets`` are candidates (default: every ``kernel`` in the
``params`` collection), so biases and batch-norm parameters/statistics stay untouched unless
``targets`` says otherwise. Candidates matched by no rule stay float.

Rule semantics (documented, never silent):

* ``strict=False`` (default): **first match wins** -- a leaf takes the first rule (in list
  order) whose regex matches it; later matching rules are not ambiguous, they are shadowed.
* ``strict=True``: a leaf matched by more than one rule raises ``ValueError`` naming both
  rules (use it when rules are meant to be disjoint).
* A rule that ends up applying to no leaf (matches nothing, or everything it matches is
  claimed by earlier rules) raises ``ValueError``: it is almost certainly a typo.
* A QuantConfig that would apply to a non-float leaf (e.g. an integer counter) raises
  ``ValueError``.

Layouts (which kernel axis is the output channel): ``QuantConfig.axis`` defaults to ``-1``,
the output channel of linen / NNX kernels (``(in, out)``, HWIO). Other frameworks store kernels
differently (equinox ``Linear`` is ``(out, in)``), so pass ``layouts={kernel_path:
output_axis}`` (``bq_jax.models.adapt(...).layouts``): then

* the candidates default to exactly the kernels in ``layouts`` (whatever their leaf name);
* ``channel_axis="output"`` (default): per-channel / per-group configs take each kernel's
  output axis from ``layouts``; a config whose ``axis`` is not the default ``-1`` and names
  another axis is refused (``ValueError``), never silently honoured or overridden;
* ``channel_axis="config"``: the config's ``axis`` is used as given (an explicit choice, e.g.
  per-input-channel scales).

Without ``layouts`` the config's axis is used as given (the linen convention).

Example rule list (first and last layer at 8 bits, the rest at 4 bits)::

    rules = [
        (r"Dense_0/kernel$|Dense_2/kernel$", QuantConfig(bits=8, symmetric=True)),
        (r"kernel$", QuantConfig(bits=4, symmetric=True, granularity="per_channel")),
    ]
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bq_jax import quant
from bq_jax.ptq.paths import flatten_params, unflatten_params

__all__ = [
    "CHANNEL_AXIS_MODES",
    "DEFAULT_TARGETS",
    "quantize_weights",
    "quantize_weights_stack",
    "resolve_axis",
    "resolve_rules",
    "stack_params",
]

# Leaves quantized by default: kernels of the "params" collection.
DEFAULT_TARGETS = r"^params/(.*/)?kernel$"

Rule = tuple[str, Any]

# How a per-channel config's axis meets a kernel's layout: "output" (from the layout) or
# "config" (as given).
CHANNEL_AXIS_MODES = ("output", "config")


def _is_config(x) -> bool:
    return isinstance(x, quant.QuantConfig)


def _normalise_rules(spec_or_rules, targets) -> list[tuple[str, re.Pattern, Any]]:
    if _is_config(spec_or_rules):
        return [(targets or ".*", re.compile(targets or ".*"), spec_or_rules)]
    if isinstance(spec_or_rules, str | bytes) or not isinstance(spec_or_rules, Sequence):
        raise TypeError(
            "spec_or_rules must be a QuantConfig or a sequence of (regex, QuantConfig | None) "
            f"pairs, got {type(spec_or_rules).__name__}"
        )
    if len(spec_or_rules) == 0:
        raise ValueError("rules is empty; give at least one (regex, QuantConfig | None) pair")
    out = []
    for i, rule in enumerate(spec_or_rules):
        if not (isinstance(rule, tuple | list) and len(rule) == 2 and isinstance(rule[0], str)):
            raise TypeError(f"rule {i} must be a (regex, QuantConfig | None) pair, got {rule!r}")
        pattern, config = rule
        if config is not None and not _is_config(config):
            raise TypeError(
                f"rule {i} ({pattern!r}): the config must be a QuantConfig or None (keep "
                f"float), got {type(config).__name__}"
            )
        try:
            compiled = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"rule {i}: {pattern!r} is not a valid regex ({err})") from err
        out.append((pattern, compiled, config))
    return out


def _check_layouts(layouts, channel_axis) -> dict[str, int] | None:
    if channel_axis not in CHANNEL_AXIS_MODES:
        raise ValueError(f"channel_axis must be one of {CHANNEL_AXIS_MODES}, got {channel_axis!r}")
    if layouts is None:
        return None
    if not isinstance(layouts, Mapping) or not layouts:
        raise TypeError(
            "layouts must be a non-empty mapping {kernel_path: output_axis} (e.g. "
            f"bq_jax.models.adapt(...).layouts), got {layouts!r}"
        )
    out = {}
    for path, axis in layouts.items():
        if not isinstance(path, str) or isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"layouts entries must be str -> int, got {path!r}: {axis!r}")
        out[path] = axis
    return out


def _layout_targets(layouts, targets):
    """With layouts, the default candidates are exactly the kernels they describe."""
    if layouts is not None and targets == DEFAULT_TARGETS:
        return "^(?:" + "|".join(re.escape(p) for p in layouts) + ")$"
    return targets


def resolve_axis(path: str, shape, config, layouts, channel_axis: str = "output"):
    """``config`` with its channel axis checked / taken from the layout of kernel ``path``.

    Per-tensor configs, paths without a layout and ``layouts=None`` return ``config`` as is.
    With ``channel_axis="output"`` a per-channel / per-group config gets the output axis
    ``layouts[path]``; a non-default ``axis`` (not ``-1``) naming another axis raises
    ``ValueError``. ``channel_axis="config"`` keeps the config's axis.

    Example:
      >>> cfg = quant.QuantConfig(bits=4, granularity="per_channel")
      >>> resolve_axis("params/fc/weight", (10, 32), cfg, {"params/fc/weight": 0}).axis
      0
    """
    if layouts is None or path not in layouts or config.granularity == "per_tensor":
        return config
    ndim = len(shape)
    out = layouts[path]
    if not -ndim <= out < ndim:
        raise ValueError(f"layouts[{path!r}] = {out} is not an axis of its shape {tuple(shape)}")
    if -ndim <= config.axis < ndim and config.axis % ndim == out % ndim:
        return config
    if channel_axis == "config":
        return config
    if config.axis != -1:
        raise ValueError(
            f"QuantConfig(axis={config.axis}, granularity={config.granularity!r}) would take "
            f"the scales of {path!r} (shape {tuple(shape)}) along axis {config.axis}, but its "
            f"output channel is axis {out}: per-channel weight scales belong to output "
            f"channels. Use axis={out} (or the default), or pass channel_axis='config' to "
            f"quantize along axis {config.axis} on purpose"
        )
    return dataclasses.replace(config, axis=out)


def resolve_rules(
    params: Mapping[str, Any],
    spec_or_rules,
    *,
    targets: str | None = DEFAULT_TARGETS,
    strict: bool = False,
    layouts: Mapping[str, int] | None = None,
    channel_axis: str = "output",
) -> dict[str, Any]:
    """Which QuantConfig applies to which leaf: ``{path: QuantConfig}`` (float leaves omitted).

    Args:
      params: flax variables dict.
      spec_or_rules: a QuantConfig (applied to every targeted leaf) or ordered rules
        ``[(regex, QuantConfig | None), ...]`` (see the module docstring for the semantics).
      targets: regex selecting candidate leaves (default: ``kernel`` leaves of ``params``,
        or exactly the kernels of ``layouts``); ``None`` makes every leaf a candidate.
      strict: raise when a leaf is matched by more than one rule (instead of first match wins).
      layouts: ``{kernel_path: output_axis}`` (module docstring); ``None``: configs as given.
      channel_axis: ``"output"`` or ``"config"`` (module docstring, :func:`resolve_axis`).

    Returns:
      ``{path: QuantConfig}`` in the flattening order of ``params`` (axes resolved).

    Raises:
      ValueError: a rule applies to no leaf, ambiguous rules under ``strict=True``, a config
        for a non-float leaf, an invalid regex, or a per-channel axis that is not the
        kernel's output axis. TypeError: malformed rules or layouts.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> cfg8, cfg4 = quant.QuantConfig(bits=8), quant.QuantConfig(bits=4)
      >>> plan = resolve_rules(variables, [(r"layers_0/", cfg8), (r"kernel$", cfg4)])
      >>> {path: cfg.bits for path, cfg in plan.items()}
      {'params/layers_0/kernel': 8, 'params/layers_2/kernel': 4}
    """
    layouts = _check_layouts(layouts, channel_axis)
    targets = _layout_targets(layouts, targets)
    rules = _normalise_rules(spec_or_rules, targets)
    flat = flatten_params(params)
    if layouts is not None:
        missing = [p for p in layouts if p not in flat]
        if missing:
            raise ValueError(f"layouts name kernels that params lack: {missing}")
    target_re = re.compile(targets) if targets is not None else None
    candidates = [p for p in flat if target_re is None or target_re.search(p)]
    if not candidates:
        hint = (
            "; kernels of models from other frameworks have other names (equinox: weight): "
            "pass layouts=bq_jax.models.adapt(model, sample_x=x).layouts"
            if layouts is None
            else ""
        )
        raise ValueError(
            f"no leaf of params matches targets={targets!r}; paths: {list(flat)}{hint}"
        )

    used = [0] * len(rules)
    matched = [0] * len(rules)
    owner: dict[str, int] = {}
    for path in candidates:
        hits = [i for i, (_, rx, _) in enumerate(rules) if rx.search(path)]
        for i in hits:
            matched[i] += 1
        if not hits:
            continue
        if strict and len(hits) > 1:
            a, b = rules[hits[0]][0], rules[hits[1]][0]
            raise ValueError(
                f"ambiguous rules for {path!r}: rule {hits[0]} ({a!r}) and rule {hits[1]} "
                f"({b!r}) both match it (strict=True); make the regexes disjoint or use "
                "strict=False (first match wins)"
            )
        owner[path] = hits[0]
        used[hits[0]] += 1

    for i, (pattern, _, _) in enumerate(rules):
        if matched[i] == 0:
            raise ValueError(
                f"rule {i} ({pattern!r}) matches no parameter among the targeted leaves "
                f"(targets={targets!r}): {candidates}"
            )
        if used[i] == 0:
            raise ValueError(
                f"rule {i} ({pattern!r}) never applies: every leaf it matches is claimed by an "
                "earlier rule (first match wins); reorder or remove it"
            )

    out = {}
    for path in candidates:
        if path not in owner:
            continue
        config = rules[owner[path]][2]
        if config is None:
            continue
        dtype = jnp.asarray(flat[path]).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"rule {owner[path]} ({rules[owner[path]][0]!r}) gives a QuantConfig for "
                f"{path!r}, a non-float leaf of dtype {dtype}; only floating-point leaves can be "
                "quantized (narrow the regex or targets)"
            )
        out[path] = resolve_axis(path, jnp.shape(flat[path]), config, layouts, channel_axis)
    return out


@functools.partial(jax.jit, static_argnums=1)
def _quantize_leaf(w, config):
    """Fake-quantized ``w``, its QParams and SQNR under ``config`` (compiled per shape/config)."""
    qp = quant.compute_qparams(w, config)
    wq = quant.fake_quant(w, config)
    return wq, qp, quant.sqnr_db(w, wq)


def _check_finite_leaf(w, path: str) -> None:
    """Refuses a weight holding NaN / inf (its range, so every weight sharing it, would be NaN)."""
    if isinstance(w, jax.core.Tracer):
        return
    bad = ~np.isfinite(np.asarray(w))
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"weight {path!r} holds {int(bad.sum())} NaN / inf values (first at index {first}); "
            "quantize_weights needs finite weights"
        )


def _summary_row(path, config, qp, sqnr) -> dict:
    scale = jnp.asarray(qp.scale)
    return {
        "path": path,
        "bits": config.bits,
        "fmt": config.fmt,
        "granularity": config.granularity,
        "range_method": config.range_method,
        "scale_min": float(jnp.min(scale)),
        "scale_max": float(jnp.max(scale)),
        "scale_mean": float(jnp.mean(scale)),
        "sqnr_db": float(sqnr),
    }


def quantize_weights(
    params: Mapping[str, Any],
    spec_or_rules,
    *,
    targets: str | None = DEFAULT_TARGETS,
    strict: bool = False,
    return_summary: bool = False,
    layouts: Mapping[str, int] | None = None,
    channel_axis: str = "output",
):
    """PTQ-W: fake-quantizes the targeted weight leaves of a variables dict.

    Each selected leaf ``w`` becomes ``quant.fake_quant(w, config)``, i.e.
    ``(clip(round(w / s) + zp, qmin, qmax) - zp) * s`` with ``s, zp`` from the config's range
    method (white paper, section 2 and 3.1: per-tensor or per-channel, min-max / MSE / ...).

    Args:
      params: flax variables dict ``{"params": ..., "batch_stats": ...}``.
      spec_or_rules: a QuantConfig for every targeted leaf, or ordered rules
        ``[(regex, QuantConfig | None), ...]`` (module docstring).
      targets: regex of candidate leaf paths (default: kernels); ``None`` for all leaves.
      strict: leaves matched by more than one rule raise instead of first match wins.
      return_summary: also return one row per quantized leaf: ``path, bits, fmt,
        granularity, range_method, scale_min, scale_max, scale_mean, sqnr_db``.
      layouts: ``{kernel_path: output_axis}`` of the kernels (``adapt(...).layouts``), so that
        per-channel scales are per output channel whatever the kernel layout; default: the
        configs' axes as given (linen layout).
      channel_axis: ``"output"`` (take the axis from ``layouts``; refuse a conflicting
        explicit one) or ``"config"`` (use the config's axis on purpose).

    Returns:
      The quantized variables dict (same structure and dtypes), and the summary list if
      ``return_summary``.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> cfg = quant.QuantConfig(bits=4, symmetric=True, granularity="per_channel")
      >>> params_q, rows = quantize_weights(variables, cfg, return_summary=True)
      >>> rows[0]["path"], rows[0]["bits"]
      ('params/layers_0/kernel', 4)

      An equinox-style ``(out, in)`` kernel gets one scale per output row from its layout
      (3 bits: scales 2/3 and 1/6, so row 1 keeps its resolution):

      >>> params = {"params": {"fc": {"weight": jnp.array([[1.0, -2.0], [0.5, 0.25]])}}}
      >>> cfg = quant.QuantConfig(bits=3, granularity="per_channel")
      >>> quantize_weights(params, cfg, layouts={"params/fc/weight": 0})["params"]["fc"]["weight"]
      Array([[ 1.3333334 , -2.        ],
             [ 0.5       ,  0.33333334]], dtype=float32)
    """
    plan = resolve_rules(
        params,
        spec_or_rules,
        targets=targets,
        strict=strict,
        layouts=layouts,
        channel_axis=channel_axis,
    )
    flat = flatten_params(params)
    summary = []
    for path, config in plan.items():
        w = flat[path]
        _check_finite_leaf(w, path)
        wq, qp, sqnr = _quantize_leaf(w, config)
        flat[path] = wq.astype(w.dtype)
        if return_summary:
            summary.append(_summary_row(path, config, qp, sqnr))
    out = unflatten_params(flat)
    return (out, summary) if return_summary else out


def stack_params(variants: Sequence[Mapping[str, Any]]):
    """Stacks variables dicts of equal structure along a new leading variant axis ``V``.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> stack = stack_params([variables, quantize_weights(variables, quant.QuantConfig(bits=4))])
      >>> stack["params"]["layers_0"]["kernel"].shape
      (2, 4, 8)
    """
    if len(variants) == 0:
        raise ValueError("stack_params needs at least one variant")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *variants)


def quantize_weights_stack(
    params: Mapping[str, Any],
    configs: Sequence[Any],
    *,
    targets: str | None = DEFAULT_TARGETS,
    strict: bool = False,
    layouts: Mapping[str, int] | None = None,
    channel_axis: str = "output",
):
    """``V`` PTQ-W variants of ``params`` stacked on a leading axis, for ``geometry.sweep_labels``.

    Each entry of ``configs`` is a spec or a rule list as in :func:`quantize_weights`
    (e.g. bit widths 2-8, several range methods). Each leaf is quantized by one jitted
    function with the config static, so every distinct (config, leaf shape) pair compiles once
    and is reused across calls; the variants are then stacked. (Bit width, code range and
    range method are static in ``QuantConfig``, so variants cannot share one vmapped trace.)
    Leaves left in float are repeated along the variant axis so that every leaf has the
    leading axis ``V``.

    Args:
      params: flax variables dict.
      configs: sequence of specs or rule lists (length ``V >= 1``).
      targets, strict, layouts, channel_axis: as in :func:`quantize_weights`.

    Returns:
      Variables dict whose leaves have shape ``(V, *leaf.shape)``.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> stack = quantize_weights_stack(variables, [quant.QuantConfig(bits=b) for b in (2, 4, 8)])
      >>> from bq_jax import geometry
      >>> slc = geometry.pca_slice(x, resolution=16)
      >>> geometry.sweep_labels(model.apply, stack, slc).shape
      (3, 16, 16)
    """
    if isinstance(configs, str | bytes) or not isinstance(configs, Sequence) or _is_config(configs):
        raise TypeError("configs must be a sequence of QuantConfigs or rule lists")
    if len(configs) == 0:
        raise ValueError("configs is empty; give at least one variant")
    variants = [
        quantize_weights(
            params, c, targets=targets, strict=strict, layouts=layouts, channel_axis=channel_axis
        )
        for c in configs
    ]
    return stack_params(variants)
