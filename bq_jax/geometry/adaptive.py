"""Adaptive boundary tracing: an R x R label map from a coarse grid refined only where needed.

:func:`adaptive_labels` evaluates the model on a coarse lattice of the slice grid (every
``coarse_step``-th grid point per axis, plus the last), then level by level halves the cells
that must be refined and evaluates only their new lattice points, down to single grid steps;
every grid point never evaluated gets the label of the uniform cell around it. Each level's
points are evaluated in one jitted, chunked call whose batch is padded to a power of two (at
least ``min_bucket``), so a sweep compiles at most ``log2`` batch sizes once and never
retraces for new parameter values or planes.

Which cells are refined (``certified``):

* ``False`` (corner rule): a cell whose four corner labels are not all equal. The result
  equals the dense :func:`~bq_jax.geometry.sweep_labels` map **exactly when no uniform cell
  hides a region of another label that touches none of its corners** (an island smaller
  than a coarse cell, or a thin sliver crossing a cell between its corners). It held for the
  tested classifiers (linear, a trained digits MLP and its 1/8-rounded copy, a small CNN) at
  the default ``coarse_step=8`` for R = 33 ... 1024, but it is not a guarantee: with
  ``coarse_step=16`` at R = 100 the rounded MLP's map lost a 55-point sliver that the
  certified rule finds.
* ``True`` (Lipschitz rule): additionally refine every cell whose corners agree but whose
  smallest corner gap ``g = z_top1 - z_top2`` is at most ``L * rho`` (``rho`` the cell's
  half-diagonal in slice coordinates, ``L`` a Lipschitz constant of the pairwise logit
  differences ``z_a - z_k`` along the plane). Every point of the cell lies within ``rho`` of
  a corner, so ``z_a - z_k > 0`` there: the cell cannot contain a boundary. With a proven
  ``lipschitz`` bound passed by the caller this is a certificate (up to float32 rounding of
  the logits); without one, ``L`` is estimated as ``safety`` times the largest in-plane
  gradient norm of ``z_a - z_k`` seen on a lattice of at least 33 x 33 grid points (the
  coarse lattice when finer) -- an estimate, not a bound (a sharper feature between the
  sampled points can exceed it), and the result reports which one was used.

The result reports the model evaluations (distinct grid points) next to the dense count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bq_jax._src.checks import check_float, check_int
from bq_jax.geometry.engine import check_chunk, num_variants
from bq_jax.geometry.slices import Slice, stack_slices

__all__ = ["AdaptiveLabels", "adaptive_labels"]


class AdaptiveLabels(NamedTuple):
    """Result of :func:`adaptive_labels` (maps of a stacked slice carry a leading axis S)."""

    #: int32[(S,) V, R, R] label maps.
    labels: np.ndarray
    #: int64[(S,) V] model evaluations per map: distinct grid points evaluated.
    evaluations: np.ndarray
    #: int64[(S,) V] evaluations including the padding of the power-of-two batches.
    padded_evaluations: np.ndarray
    #: R * R, the evaluations of the dense map.
    dense_evaluations: int
    #: float64[(S,) V] Lipschitz constant used per map (NaN with ``certified=False``).
    lipschitz: np.ndarray
    #: "given", "estimate" or "none": where ``lipschitz`` comes from.
    lipschitz_source: str
    #: int64[(S,) V] cells whose corners agreed but were refined by the Lipschitz rule.
    lipschitz_refined: np.ndarray


def _pow2_at_least(n: int, low: int) -> int:
    return max(low, 1 << max(0, (n - 1).bit_length()))


def _gap(z):
    top = lax.top_k(z, 2)[0]
    return (top[..., 0] - top[..., 1]).astype(jnp.float32)


def _points(slc: Slice, ii, jj):
    """Inputs at grid points ``[ii, jj]``, built exactly as the dense sweep builds them."""
    u1, u2 = slc.coords()
    return slc.to_input(jnp.stack([u1[jj], u2[ii]], axis=-1))


def _eval_impl(params_stack, v, slc, ii, jj, *, apply_fn, chunk):
    """``(labels int32[B], gap float32[B], finite bool)`` of variant ``v`` at the B points."""
    params = jax.tree.map(lambda l: lax.dynamic_index_in_dim(l, v, 0, keepdims=False), params_stack)
    b = ii.shape[0]

    def one_chunk(idx):
        z = apply_fn(params, _points(slc, idx[0], idx[1]))
        return jnp.argmax(z, axis=-1).astype(jnp.int32), _gap(z), jnp.all(jnp.isfinite(z))

    idx = jnp.stack([ii.reshape(b // chunk, chunk), jj.reshape(b // chunk, chunk)], axis=1)
    labels, gap, ok = lax.map(one_chunk, idx)
    return labels.reshape(b), gap.reshape(b), jnp.all(ok)


def _grad_impl(params_stack, v, slc, ii, jj, *, apply_fn, chunk):
    """float32[B]: ``max_{a,k} |grad_u (z_a - z_k)|`` of variant ``v`` at the B points."""
    params = jax.tree.map(lambda l: lax.dynamic_index_in_dim(l, v, 0, keepdims=False), params_stack)
    b = ii.shape[0]
    u1, u2 = slc.coords()

    def one_chunk(idx):
        u = jnp.stack([u1[idx[1]], u2[idx[0]]], axis=-1)

        def f(u):
            return apply_fn(params, slc.to_input(u))

        cols = [jax.jvp(f, (u,), (jnp.zeros_like(u).at[:, k].set(1.0),))[1] for k in (0, 1)]
        jac = jnp.stack(cols, axis=-1).astype(jnp.float32)  # [C, K, 2]
        diff = jnp.expand_dims(jac, 1) - jnp.expand_dims(jac, 2)  # [C, K, K, 2]
        return jnp.max(jnp.sqrt(jnp.sum(diff * diff, axis=-1)), axis=(1, 2))

    idx = jnp.stack([ii.reshape(b // chunk, chunk), jj.reshape(b // chunk, chunk)], axis=1)
    return lax.map(one_chunk, idx).reshape(b)


_STATIC = ("apply_fn", "chunk")
#: ``eval_points_jit(params_stack, v, slc, ii, jj, *, apply_fn, chunk)``: labels, top-2 gaps
#: and an all-finite flag of variant ``v`` at grid points ``[ii, jj]`` (B a multiple of chunk).
eval_points_jit = jax.jit(_eval_impl, static_argnames=_STATIC)
#: ``gap_gradient_jit(...)``: largest in-plane gradient norm of a pairwise logit difference.
gap_gradient_jit = jax.jit(_grad_impl, static_argnames=_STATIC)


def _lattice(r: int, step: int) -> np.ndarray:
    return np.unique(np.r_[np.arange(0, r, step), r - 1])


def _cell_of(lattice: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Index of the lattice cell ``[X[c], X[c+1]]`` holding each coordinate (right-closed at
    the end)."""
    return np.clip(np.searchsorted(lattice, coords, side="right") - 1, 0, len(lattice) - 2)


class _Evaluator:
    """Pads each batch of points to a power of two and evaluates it with the jitted kernels."""

    def __init__(self, apply_fn, params_stack, v, slc, chunk, min_bucket):
        self.args = (params_stack, jnp.int32(v), slc)
        self.apply_fn, self.chunk, self.min_bucket = apply_fn, chunk, min_bucket
        self.padded = 0

    def _pad(self, ii, jj):
        n = ii.size
        b = _pow2_at_least(n, self.min_bucket)
        c = min(self.chunk, b)
        self.padded += b
        pad = np.zeros(b - n, np.int32)
        return (
            jnp.asarray(np.r_[ii, pad].astype(np.int32)),
            jnp.asarray(np.r_[jj, pad].astype(np.int32)),
            c,
        )

    def labels(self, ii, jj):
        pi, pj, c = self._pad(ii, jj)
        lab, gap, ok = eval_points_jit(*self.args, pi, pj, apply_fn=self.apply_fn, chunk=c)
        if not bool(ok):
            raise ValueError(
                "apply_fn produced NaN or inf logits on the slice grid; check the parameters"
            )
        n = ii.size
        return np.asarray(lab)[:n], np.asarray(gap)[:n]

    def gradient(self, ii, jj):
        pi, pj, c = self._pad(ii, jj)
        self.padded -= pi.shape[0]  # gradients are not label evaluations
        g = gap_gradient_jit(*self.args, pi, pj, apply_fn=self.apply_fn, chunk=c)
        return np.asarray(g)[: ii.size]


def _trace_one(ev: _Evaluator, slc: Slice, step: int, certified: bool, lipschitz, safety):
    """One label map: returns ``(labels, evaluations, L, lipschitz_refined)``."""
    r = slc.resolution
    labels = np.full((r, r), -1, np.int32)
    gap = np.full((r, r), np.inf, np.float32)
    evaluated = np.zeros((r, r), bool)
    filled = np.zeros((r, r), bool)
    spacing = (np.asarray(slc.u_max, np.float64) - np.asarray(slc.u_min, np.float64)) / (r - 1)

    def evaluate(ii, jj):
        if ii.size == 0:
            return
        lab, g = ev.labels(ii, jj)
        labels[ii, jj], gap[ii, jj], evaluated[ii, jj] = lab, g, True

    x = _lattice(r, step)
    ii, jj = (a.ravel() for a in np.meshgrid(x, x, indexing="ij"))
    evaluate(ii, jj)
    big_l = np.nan
    if certified:
        if lipschitz is not None:
            big_l = float(lipschitz)
        else:  # gradients on a lattice of at least 33 x 33 points (or the coarse one if finer)
            xe = _lattice(r, min(step, max(1, (r - 1) // 32)))
            ei, ej = (a.ravel() for a in np.meshgrid(xe, xe, indexing="ij"))
            big_l = safety * float(np.max(ev.gradient(ei, ej)))
    refined_by_l = 0
    parent_refine = None  # cells of the previous level that were refined
    x_prev = None
    all_coords = np.arange(r)
    while True:
        nc = len(x) - 1
        corners = labels[np.ix_(x, x)]
        c00, c01, c10, c11 = corners[:-1, :-1], corners[:-1, 1:], corners[1:, :-1], corners[1:, 1:]
        mixed = (c00 != c01) | (c00 != c10) | (c00 != c11)
        active = np.ones((nc, nc), bool)
        if parent_refine is not None:
            pc = _cell_of(x_prev, x[:-1])
            active = parent_refine[np.ix_(pc, pc)]
        span = np.diff(x)
        splittable = (span[:, None] > 1) | (span[None, :] > 1)
        refine = mixed & active
        if certified:
            g = gap[np.ix_(x, x)]
            gmin = np.minimum(
                np.minimum(g[:-1, :-1], g[:-1, 1:]), np.minimum(g[1:, :-1], g[1:, 1:])
            )
            rho = 0.5 * np.hypot(span[:, None] * spacing[1], span[None, :] * spacing[0])
            unsafe = active & ~mixed & ~(gmin > big_l * rho)
            refined_by_l += int(np.sum(unsafe & splittable))
            refine |= unsafe
        refine &= splittable
        # fill the never-evaluated points of this level's uniform cells
        uniform = active & ~refine & ~mixed
        cell = _cell_of(x, all_coords)
        fill = uniform[np.ix_(cell, cell)] & ~evaluated & ~filled
        if fill.any():
            corner_label = c00[np.ix_(cell, cell)]
            labels[fill] = corner_label[fill]
            filled |= fill
        if not refine.any():
            break
        step = max(1, step // 2)
        x_next = _lattice(r, step)
        ca = _cell_of(x, x_next)
        on_edge = np.isin(x_next, x) & (ca > 0) & (x_next == x[ca])
        cb = np.where(on_edge, ca - 1, ca)
        need = np.zeros((len(x_next), len(x_next)), bool)
        for a in (ca, cb):
            for b in (ca, cb):
                need |= refine[np.ix_(a, b)]
        need &= ~evaluated[np.ix_(x_next, x_next)]
        ni, nj = np.nonzero(need)
        evaluate(x_next[ni], x_next[nj])
        parent_refine, x_prev, x = refine, x, x_next
    assert not np.any(labels < 0), "adaptive tracing left grid points unlabelled"
    return labels, int(evaluated.sum()), big_l, refined_by_l


def adaptive_labels(
    apply_fn: Callable,
    params_stack,
    slc: Slice | Sequence[Slice],
    *,
    coarse_step: int = 8,
    certified: bool = False,
    lipschitz: float | None = None,
    safety: float = 2.0,
    chunk_size: int | None = None,
    min_bucket: int = 256,
) -> AdaptiveLabels:
    """Label maps like :func:`~bq_jax.geometry.sweep_labels`, evaluating the model only near
    boundaries (see the module docstring for the refinement rules and what they guarantee).

    Args:
        apply_fn: ``apply_fn(params, x) -> logits`` (same object each call: jitted code is
            cached on it).
        params_stack: pytree whose leaves share a leading variant axis V.
        slc: a :class:`Slice`, a stacked Slice or a sequence of Slices.
        coarse_step: grid steps between coarse lattice points (a power of two >= 1; 1 is the
            dense map).
        certified: also refine uniform-cornered cells the Lipschitz rule cannot clear.
        lipschitz: a proven Lipschitz bound of every ``z_a - z_k`` along the plane (slice
            coordinates are input-space Euclidean units); None: estimate it.
        safety: factor on the estimated constant (``lipschitz=None`` only), >= 1.
        chunk_size: points per model call (rounded down to a power of two; None: the
            engine's default).
        min_bucket: smallest padded batch (a power of two).

    Returns:
        :class:`AdaptiveLabels`.

    Example:
        >>> import numpy as np
        >>> from bq_jax.geometry import pca_slice, sweep_labels
        >>> def apply_fn(params, x):  # a linear 3-class classifier
        ...     return x @ params["w"]
        >>> stack = {"w": np.random.default_rng(0).normal(size=(1, 2, 3)).astype(np.float32)}
        >>> slc = pca_slice(np.random.default_rng(1).normal(size=(50, 2)), resolution=257)
        >>> res = adaptive_labels(apply_fn, stack, slc)
        >>> bool((res.labels == np.asarray(sweep_labels(apply_fn, stack, slc))).all())
        True
        >>> bool(res.evaluations[0] < res.dense_evaluations // 10)
        True
    """
    if not isinstance(slc, Slice):
        slc = stack_slices(slc)
    step = check_int("coarse_step", coarse_step, 1)
    if step & (step - 1):
        raise ValueError(f"coarse_step must be a power of two, got {step}")
    min_bucket = check_int("min_bucket", min_bucket, 1)
    if min_bucket & (min_bucket - 1):
        raise ValueError(f"min_bucket must be a power of two, got {min_bucket}")
    safety = check_float("safety", safety, low=1.0)
    if lipschitz is not None:
        lipschitz = check_float("lipschitz", lipschitz, low=0.0)
    v = num_variants(params_stack)
    chunk = check_chunk(chunk_size, slc.dim)
    chunk = 1 << (chunk.bit_length() - 1)
    slices = [slc[s] for s in range(slc.num_slices)] if slc.stacked else [slc]
    lead = (len(slices), v)
    labels = np.zeros((*lead, slc.resolution, slc.resolution), np.int32)
    evals, padded, refined = (np.zeros(lead, np.int64) for _ in range(3))
    big_l = np.full(lead, np.nan)
    for s, one in enumerate(slices):
        for k in range(v):
            ev = _Evaluator(apply_fn, params_stack, k, one, chunk, min_bucket)
            out = _trace_one(ev, one, step, certified, lipschitz, safety)
            labels[s, k], evals[s, k], big_l[s, k], refined[s, k] = out
            padded[s, k] = ev.padded
    source = "none" if not certified else ("given" if lipschitz is not None else "estimate")
    if not slc.stacked:
        labels, evals, padded, big_l, refined = (
            a[0] for a in (labels, evals, padded, big_l, refined)
        )
    return AdaptiveLabels(labels, evals, padded, slc.num_points, big_l, source, refined)
