"""The loss landscape around a float solution: losses along lines, displacement along the top
Hessian directions, and gradient / basin-direction cosines along a QAT trajectory.

Definitions (QAT basin paper, "Gradients at quantized weights bias to the low-loss basin"):

* loss along the line from the float weights ``w_F`` to a quantized solution ``w_Q``:
  ``L(w_F + t (w_Q - w_F))`` for ``t`` in ``[0, t_max]`` -- the plain loss of the
  interpolated weights (no quantizer): ``t = 1`` is the deployed network.
* line barrier: ``max_{t in [0,1]} L(t) - max(L(0), L(1))`` (0 for a line that rises
  monotonically; > 0 when the two ends are separated by a ridge).
* excess loss: ``L(w_Q) - L(w_F)``.
* displacement ``d = w_Q - w_F`` (trainable ``params`` collection, ``ravel_pytree`` order);
  its top-k share ``sharp_fraction = |V_k d| / |d|`` with ``V_k`` the top-k Hessian
  eigenvectors at ``w_F`` (an isotropic ``d`` would give ``sqrt(k / P)``); the quadratic
  model of the excess ``d^T H d / 2`` (one Hessian-vector product) and its part along the top-k
  directions ``sum_i lambda_i (v_i . d)^2 / 2``.
* basin direction at a QAT iterate (latent ``w_t``, deployed ``w_q,t = Q(w_t)``):
  ``u_t = w_F - w_q,t``, the straight way back to the float solution, which lies on the basin
  floor. ``cosine_quantized = cos(-g_Q, u_t)`` with ``g_Q`` the straight-through gradient
  ``d L(Q(w)) / dw`` at ``w_t`` (the gradient STE-QAT follows) and ``cosine_float =
  cos(-grad L(w_t), u_t)`` (the gradient the float-gradient ablation follows). Across the
  valley wall: ``cosine_sharp = cos(-g_Q, -V_k^T V_k (w_q,t - w_F))``, the component of the
  way back that lies in the top-k (sharp) subspace.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from bq_jax.qat import quantizers as qz

__all__ = ["Landscape", "cosine"]


def cosine(a, b) -> float | None:
    """``<a, b> / (|a| |b|)`` of two flat vectors; None if either is zero.

    Example:
      >>> cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0]))
      0.7071067811865475
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 or nb == 0.0:
        return None
    return float(a @ b / (na * nb))


class Landscape:
    """Jitted losses and gradients of one classifier on one split (whole split per call).

    Args:
      apply_fn: ``apply_fn(variables, x) -> logits``.
      variables_float: the float solution ``w_F`` (its non-``params`` collections are held
        fixed everywhere).
      x, y: the split (e.g. the training set: the loss QAT minimises).

    Example:
      >>> apply_fn = lambda v, x: x @ v["params"]["w"]
      >>> w_float = {"params": {"w": jnp.zeros((2, 3))}}
      >>> w_quant = {"params": {"w": jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])}}
      >>> land = Landscape(apply_fn, w_float, jnp.ones((4, 2)), jnp.zeros(4, jnp.int32))
      >>> np.round(land.line(w_quant, [0.0, 1.0]), 4)  # L(w_F) = log 3
      array([1.0986, 0.5514])
    """

    def __init__(self, apply_fn, variables_float, x, y):
        self.apply_fn = apply_fn
        self.variables_float = variables_float
        self.x = jnp.asarray(x)
        self.y = jnp.asarray(y)
        self.w_float, self.unravel = ravel_pytree(variables_float["params"])
        self._rest = {k: v for k, v in variables_float.items() if k != "params"}
        self._loss_flat = jax.jit(self._flat_loss)
        self._grad_flat = jax.jit(jax.grad(self._flat_loss))
        self._line = jax.jit(jax.vmap(self._flat_loss))
        self._ste_grad_cache: dict = {}
        self._deploy_cache: dict = {}

    @property
    def num_params(self) -> int:
        return int(self.w_float.shape[0])

    def params_loss(self, params):
        """``L`` of a ``params`` collection (traceable; used for Hessian-vector products)."""
        logits = self.apply_fn({**self._rest, "params": params}, self.x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, self.y).mean()

    def _flat_loss(self, w):
        return self.params_loss(self.unravel(w))

    def flat(self, variables) -> jax.Array:
        """The ``params`` collection of ``variables`` as a flat vector."""
        return ravel_pytree(variables["params"])[0]

    def loss(self, variables) -> float:
        """Mean cross-entropy of ``variables`` on the split."""
        return float(self._loss_flat(self.flat(variables)))

    def line(self, variables_q, ts) -> np.ndarray:
        """``L(w_F + t (w_Q - w_F))`` for every ``t`` (float64[T])."""
        d = self.flat(variables_q) - self.w_float
        ts = jnp.asarray(ts, jnp.float32)
        pts = jnp.expand_dims(self.w_float, 0) + jnp.expand_dims(ts, 1) * jnp.expand_dims(d, 0)
        return np.asarray(self._line(pts), np.float64)

    def random_direction_excess(self, variables_q, key, num: int = 8) -> float:
        """Mean excess ``L(w_F + r) - L(w_F)`` over ``num`` Gaussian directions ``r`` scaled
        leaf by leaf to the norms of ``d = w_Q - w_F`` (a control for the excess of ``d``).

        The directions are drawn on the host (numpy, seeded by ``key``); their losses take one
        batched call."""
        d = jax.tree.map(lambda a, b: a - b, variables_q["params"], self.variables_float["params"])
        seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
        rng = np.random.default_rng(seed)
        # ravel_pytree concatenates the leaves in tree-flattening order.
        rows = np.empty((num, self.num_params), np.float32)
        for i in range(num):
            parts = []
            for leaf in jax.tree.leaves(d):
                leaf = np.asarray(leaf, np.float64).ravel()
                g = rng.standard_normal(leaf.shape[0])
                n = np.linalg.norm(g)
                parts.append(g * (np.linalg.norm(leaf) / n) if n > 0 else g * 0.0)
            rows[i] = np.concatenate(parts)
        pts = jnp.expand_dims(self.w_float, 0) + jnp.asarray(rows)
        losses = np.asarray(self._line(pts), np.float64)
        return float(np.mean(losses)) - float(self._loss_flat(self.w_float))

    def grad(self, w_flat) -> np.ndarray:
        """``grad L`` at a flat ``params`` vector (float64)."""
        return np.asarray(self._grad_flat(jnp.asarray(w_flat, jnp.float32)), np.float64)

    def ste_grad_fn(self, plan):
        """Jitted ``(params, scales, zero_points) -> flat d L(Q(w)) / dw`` with the scales held
        constant: the (masked straight-through) gradient STE-QAT follows at latent ``params``.
        One compiled function per ``plan`` (cached)."""
        if plan not in self._ste_grad_cache:

            def f(params, scales, zps):
                def loss(p):
                    pq = qz.quantize_variables({"params": p}, plan, scales, zps, learned=False)
                    return self.params_loss(pq["params"])

                return ravel_pytree(jax.grad(loss)(params))[0]

            self._ste_grad_cache[plan] = jax.jit(f)
        return self._ste_grad_cache[plan]

    def deploy_fn(self, plan, *, range_scales: bool):
        """Jitted ``(params, scales, zero_points) -> (flat Q(w), scales, zero_points)``: the
        deployed weights of latent ``params``; with ``range_scales`` the scales and zero points
        are re-estimated from ``params`` by each leaf's range method (the inputs are ignored).
        One compiled function per ``(plan, range_scales)`` (cached)."""
        key = (plan, bool(range_scales))
        if key not in self._deploy_cache:

            def f(params, scales, zps):
                if range_scales:
                    scales, zps = qz.init_qparams({"params": params}, plan)
                vq = qz.quantize_variables({"params": params}, plan, scales, zps, learned=False)
                return ravel_pytree(vq["params"])[0], scales, zps

            self._deploy_cache[key] = jax.jit(f)
        return self._deploy_cache[key]
