"""The geometry pieces the rounding objective uses: ``bq_jax.geometry`` when it provides
them, else local implementations of the DESIGN.md definitions.

* ``slice_grid_points(x, resolution)``: the ``R x R`` grid of the PCA slice of ``x``
  (plane ``mu + P u`` through the data mean spanned by the top two principal directions,
  over the projected data range plus 10 % padding), as input-space points ``[R*R, ...]``.
* ``boundary_gap_penalty(logits_q, logits_f, *, temperature)``: the w-weighted mean
  ``sum_x w(x) huber(g_Q(x) - g_F(x)) / sum_x w(x)``, ``g = z_a - z_b`` (float top-1 / runner-up),
  ``w = exp(-|g_F| / T)`` (boundary-aware quantization paper).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from bq_jax import geometry as _g

__all__ = ["boundary_gap_penalty", "slice_grid_points"]


def _local_slice_grid_points(x, resolution: int, padding: float = 0.1):
    x = jnp.asarray(x)
    flat = x.reshape(x.shape[0], -1)
    mu = jnp.mean(flat, axis=0)
    centred = flat - jnp.expand_dims(mu, 0)
    _, _, vt = jnp.linalg.svd(centred, full_matrices=False)
    basis = vt[:2]  # (2, D)
    u = centred @ basis.T
    lo, hi = jnp.min(u, axis=0), jnp.max(u, axis=0)
    pad = padding * (hi - lo)
    lo, hi = lo - pad, hi + pad
    t = jnp.linspace(0.0, 1.0, resolution)
    g0 = lo[0] + t * (hi[0] - lo[0])
    g1 = lo[1] + t * (hi[1] - lo[1])
    uu = jnp.stack(jnp.meshgrid(g0, g1, indexing="ij"), axis=-1).reshape(-1, 2)
    pts = jnp.expand_dims(mu, 0) + uu @ basis
    return pts.reshape(-1, *x.shape[1:])


def _geometry_slice_grid_points(x, resolution: int):
    slc = _g.pca_slice(x, resolution=resolution)
    return jnp.asarray(slc.points(flat=True)).reshape(-1, *jnp.shape(x)[1:])


def _top2(logits_f):
    order = jnp.argsort(-logits_f, axis=-1)
    return order[..., :1], order[..., 1:2]


def _gap(logits, a, b):
    za = jnp.take_along_axis(logits, a, axis=-1)[..., 0]
    zb = jnp.take_along_axis(logits, b, axis=-1)[..., 0]
    return za - zb


def _local_boundary_gap_penalty(logits_q, logits_f, *, temperature: float = 1.0):
    a, b = _top2(logits_f)
    gf = _gap(logits_f, a, b)
    gq = _gap(logits_q, a, b)
    w = jnp.exp(-jnp.abs(gf) / temperature)
    return jnp.sum(w * optax.huber_loss(gq, gf)) / jnp.maximum(jnp.sum(w), 1e-12)


def _geometry_boundary_gap_penalty(logits_q, logits_f, *, temperature: float = 1.0):
    return _g.boundary_gap_penalty(
        logits_q, logits_f, temperature=temperature, reduction="weighted_mean"
    )


slice_grid_points = (
    _geometry_slice_grid_points if hasattr(_g, "pca_slice") else _local_slice_grid_points
)
boundary_gap_penalty = (
    _geometry_boundary_gap_penalty
    if hasattr(_g, "boundary_gap_penalty")
    else _local_boundary_gap_penalty
)
