"""Argument checks shared by the PTQ modules (internal: not re-exported by ``bq_jax.ptq``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_calibration"]


def check_calibration(calibration_x, name: str = "calibration_x") -> jax.Array:
    """``calibration_x`` as a non-empty floating-point batch ``x[N, *input_shape]``.

    Raises:
      ValueError: fewer than 2 dimensions, no examples, or NaN / inf values.
      TypeError: not floating point.
    """
    x = jnp.asarray(calibration_x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty batch x[N, *input_shape], got shape {x.shape}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if not isinstance(x, jax.core.Tracer):
        bad = ~np.isfinite(np.asarray(x))
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} holds {int(bad.sum())} NaN / inf values (first at index {first}); "
                "calibration needs finite inputs"
            )
    return x
