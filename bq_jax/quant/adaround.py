"""Learned rounding (AdaRound): the rectified sigmoid, its inverse, soft/hard weights, regulariser.

AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization",
ICML 2020; also the quantization white paper, Nagel et al. 2021, section 3.5) replaces
round-to-nearest by a learned choice between rounding down and up. Each weight gets a
continuous variable ``V``; the soft quantized weight is

    W~ = s * (clip(floor(W / s) + h(V) + zp, qmin, qmax) - zp),
    h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),      zeta = 1.1, gamma = -0.1,

and a regulariser ``sum(1 - |2 h(V) - 1|^beta)`` pushes ``h`` to 0 or 1 while ``beta`` is
annealed from 20 to 2 after a 20 % warm start (during which the regulariser is off). At the
end the rounding is made hard: ``h = 1{V >= 0}``.

All functions are pure and jit-able; ``scale`` and ``zero_point`` broadcast against ``w``
(per-tensor scalars, or per-channel arrays with the same rank as ``w`` or with fewer leading
axes, which are added explicitly).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bq_jax.quant.common import check_qrange, check_x, is_real

__all__ = [
    "ADAROUND_GAMMA",
    "ADAROUND_ZETA",
    "adaround_codes",
    "adaround_h",
    "adaround_init",
    "adaround_regularizer",
    "adaround_weights",
    "beta_schedule",
    "regularizer_active",
]

ADAROUND_ZETA = 1.1
ADAROUND_GAMMA = -0.1

# sigmoid(V) is kept inside [eps, 1 - eps] by the inverse so that V stays finite.
_INIT_EPS = 1e-6


def _check_stretch(zeta: float, gamma: float) -> None:
    if not (is_real(zeta) and is_real(gamma)):
        raise TypeError(f"zeta and gamma must be floats, got {zeta!r} and {gamma!r}")
    if not (gamma < 0.0 and zeta > 1.0):
        raise ValueError(
            f"the rectified sigmoid needs gamma < 0 < 1 < zeta so that h reaches 0 and 1 "
            f"exactly; got zeta={zeta}, gamma={gamma}"
        )


def _broadcast_like(q, w: jax.Array, name: str) -> jax.Array:
    """Left-pads ``q`` with unit axes to the rank of ``w`` (explicit numpy-style broadcasting)."""
    q = jnp.asarray(q, dtype=w.dtype)
    if q.ndim > w.ndim:
        raise ValueError(f"{name} has rank {q.ndim} > rank {w.ndim} of the weights")
    q = q.reshape((1,) * (w.ndim - q.ndim) + q.shape)
    try:
        jnp.broadcast_shapes(q.shape, w.shape)
    except ValueError as err:
        raise ValueError(
            f"{name} of shape {q.shape} does not broadcast against weights of shape {w.shape}"
        ) from err
    return q


def adaround_h(v, *, zeta: float = ADAROUND_ZETA, gamma: float = ADAROUND_GAMMA) -> jax.Array:
    """Rectified sigmoid of AdaRound.

    ``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` (Nagel et al. 2020, eq. 23).
    Stretching the sigmoid past [0, 1] before clipping lets ``h`` reach exactly 0 and 1 with
    a non-vanishing gradient inside the range.

    Args:
      v: rounding variables, any float array.
      zeta: right stretch, > 1 (default 1.1).
      gamma: left stretch, < 0 (default -0.1).

    Returns:
      ``h(v)`` in [0, 1], same shape and dtype as ``v``.

    Example:
      >>> float(adaround_h(jnp.float32(0.0)))
      0.5
    """
    _check_stretch(zeta, gamma)
    v = check_x(v, "v")
    return jnp.clip(jax.nn.sigmoid(v) * (zeta - gamma) + gamma, 0.0, 1.0)


def adaround_init(
    w, scale, *, zeta: float = ADAROUND_ZETA, gamma: float = ADAROUND_GAMMA
) -> jax.Array:
    """Initial rounding variables ``V`` with ``h(V) = frac(W / s)``.

    Inverts the rectified sigmoid: ``V = logit((frac(W/s) - gamma) / (zeta - gamma))``, with
    the sigmoid value clipped to [1e-6, 1 - 1e-6] so ``V`` is always finite. Since
    ``frac`` lies in [0, 1), the soft weight ``adaround_weights(w, V, ...)`` reproduces ``w``
    (up to float rounding) wherever ``w`` is inside the clipping range.

    Args:
      w: float weights.
      scale: quantization step, broadcastable against ``w`` (see module docstring).
      zeta, gamma: stretch of the rectified sigmoid.

    Returns:
      ``V`` with the shape of ``w``.

    Example:
      >>> v = adaround_init(jnp.array([0.26, -0.74]), 0.5)
      >>> adaround_h(v)  # frac([0.52, -1.48]) = [0.52, 0.52]
      Array([0.52, 0.52], dtype=float32)
    """
    _check_stretch(zeta, gamma)
    w = check_x(w, "w")
    s = _broadcast_like(scale, w, "scale")
    x = w / s
    frac = x - jnp.floor(x)
    p = jnp.clip((frac - gamma) / (zeta - gamma), _INIT_EPS, 1.0 - _INIT_EPS)
    return jnp.log(p) - jnp.log1p(-p)


def adaround_codes(
    w,
    v,
    scale,
    zero_point,
    *,
    qmin: int,
    qmax: int,
    zeta: float = ADAROUND_ZETA,
    gamma: float = ADAROUND_GAMMA,
) -> jax.Array:
    """Integer codes of hard AdaRound: ``clip(floor(W/s) + 1{V >= 0} + zp, qmin, qmax)``.

    Args:
      w, v, scale, zero_point: as in :func:`adaround_weights`.
      qmin, qmax: integer code range.
      zeta, gamma: unused by the hard rule; accepted for a uniform signature.

    Returns:
      int32 codes with the shape of ``w``.

    Example:
      >>> adaround_codes(jnp.array([0.3]), jnp.array([1.0]), 0.5, 0, qmin=-8, qmax=7)
      Array([1], dtype=int32)
    """
    w, v, s, zp = _prepare(w, v, scale, zero_point, qmin, qmax, zeta, gamma)
    up = (v >= 0).astype(w.dtype)
    codes = jnp.clip(jnp.floor(w / s) + up + zp, qmin, qmax)
    return codes.astype(jnp.int32)


def _prepare(w, v, scale, zero_point, qmin, qmax, zeta, gamma):
    """Checked ``(w, v, scale, round(zero_point))``, the parameters broadcast against ``w``."""
    _check_stretch(zeta, gamma)
    w = check_x(w, "w")
    v = check_x(v, "v")
    if w.shape != v.shape:
        raise ValueError(f"v must have the shape of w, got {v.shape} and {w.shape}")
    check_qrange(qmin, qmax)
    s = _broadcast_like(scale, w, "scale")
    zp = jnp.round(_broadcast_like(zero_point, w, "zero_point"))
    return w, v, s, zp


def adaround_weights(
    w,
    v,
    scale,
    zero_point,
    *,
    qmin: int,
    qmax: int,
    hard: bool = False,
    zeta: float = ADAROUND_ZETA,
    gamma: float = ADAROUND_GAMMA,
) -> jax.Array:
    """Soft or hard AdaRound weights.

    ``W~ = s * (clip(floor(W/s) + h + zp, qmin, qmax) - zp)`` with ``h = h(V)`` (soft,
    differentiable in ``V``) or ``h = 1{V >= 0}`` (hard: always on the integer grid)
    (Nagel et al. 2020, eq. 22; white paper eq. 32).

    Args:
      w: float weights (treated as constants; ``floor`` has no gradient).
      v: rounding variables, same shape as ``w``.
      scale: quantization step, broadcastable against ``w``.
      zero_point: integer-valued zero point, broadcastable against ``w``.
      qmin, qmax: integer code range (e.g. -8, 7 for signed 4 bits).
      hard: use the hard rounding ``1{V >= 0}``.
      zeta, gamma: stretch of the rectified sigmoid.

    Returns:
      Quantized weights with the shape and dtype of ``w``.

    Example:
      >>> w = jnp.array([0.3, -0.3])
      >>> adaround_weights(w, adaround_init(w, 0.5), 0.5, 0, qmin=-8, qmax=7)  # == w
      Array([ 0.3, -0.3], dtype=float32)
      >>> adaround_weights(w, jnp.array([-1.0, 1.0]), 0.5, 0, qmin=-8, qmax=7, hard=True)
      Array([0., 0.], dtype=float32)
    """
    w, v, s, zp = _prepare(w, v, scale, zero_point, qmin, qmax, zeta, gamma)
    if hard:
        h = (v >= 0).astype(w.dtype)
    else:
        h = adaround_h(v, zeta=zeta, gamma=gamma)
    base = jax.lax.stop_gradient(jnp.floor(w / s))
    q = jnp.clip(base + h + zp, qmin, qmax)
    return s * (q - zp)


def adaround_regularizer(
    v, beta, *, zeta: float = ADAROUND_ZETA, gamma: float = ADAROUND_GAMMA
) -> jax.Array:
    """Rounding regulariser ``f_reg(V) = sum_i 1 - |2 h(V_i) - 1|^beta`` (Nagel et al. 2020).

    Zero when every ``h`` is exactly 0 or 1; ``len(v)`` when every ``h`` is 1/2. Large ``beta``
    (early) only pushes values near 0/1; small ``beta`` (late) pushes all of them.

    Args:
      v: rounding variables (any shape; summed over all entries).
      beta: annealing exponent (> 0; Python float or traced scalar).
      zeta, gamma: stretch of the rectified sigmoid.

    Returns:
      Scalar float.

    Example:
      >>> float(adaround_regularizer(jnp.zeros(4), 2.0))  # h = 0.5 everywhere
      4.0
    """
    if isinstance(beta, int | float) and not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    h = adaround_h(v, zeta=zeta, gamma=gamma)
    return jnp.sum(1.0 - jnp.abs(2.0 * h - 1.0) ** beta)


def _check_schedule(total, warm_start, beta_start, beta_end) -> None:
    if isinstance(total, int) and total < 1:
        raise ValueError(f"total must be a positive number of steps, got {total}")
    if not 0.0 <= warm_start < 1.0:
        raise ValueError(f"warm_start must be a fraction in [0, 1), got {warm_start}")
    if not (beta_start > 0 and beta_end > 0):
        raise ValueError(f"beta_start and beta_end must be > 0, got {beta_start}, {beta_end}")


def beta_schedule(
    step,
    total,
    *,
    warm_start: float = 0.2,
    beta_start: float = 20.0,
    beta_end: float = 2.0,
) -> jax.Array:
    """Annealed exponent ``beta`` of the rounding regulariser.

    ``beta = beta_start`` during the warm start (the first ``warm_start * total`` steps, when
    the regulariser is off, see :func:`regularizer_active`); afterwards linear decay
    ``beta = beta_end + (beta_start - beta_end) * (1 - t)``,
    ``t = (step - warm_start * total) / ((1 - warm_start) * total)`` clipped to [0, 1]
    (Nagel et al. 2020, section 5: beta from 20 to 2 after a 20 % warm start).

    Args:
      step: current step (int or traced int), 0-based.
      total: total number of steps.
      warm_start: fraction of steps without regulariser.
      beta_start, beta_end: start and end values of the exponent.

    Returns:
      float32 scalar.

    Example:
      >>> [float(beta_schedule(s, 100)) for s in (0, 20, 60, 100)]
      [20.0, 20.0, 11.0, 2.0]
    """
    _check_schedule(total, warm_start, beta_start, beta_end)
    step = jnp.asarray(step, jnp.float32)
    start = warm_start * total
    t = jnp.clip((step - start) / ((1.0 - warm_start) * total), 0.0, 1.0)
    return jnp.float32(beta_end) + jnp.float32(beta_start - beta_end) * (1.0 - t)


def regularizer_active(step, total, *, warm_start: float = 0.2) -> jax.Array:
    """1.0 once the warm start is over (``step >= warm_start * total``), else 0.0.

    Multiply the rounding regulariser by this factor (AdaRound's warm start).

    Example:
      >>> [float(regularizer_active(s, 100)) for s in (0, 19, 20)]
      [0.0, 0.0, 1.0]
    """
    _check_schedule(total, warm_start, 1.0, 1.0)
    step = jnp.asarray(step, jnp.float32)
    return (step >= warm_start * total).astype(jnp.float32)
