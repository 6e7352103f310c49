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
    #: int64[(S,) V] model evaluations per map: distinct grid points evaluated (the
    #: certified rule's Lipschitz estimate adds gradients at about 33 x 33 points, not counted).
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


def _children(r0, r1, c0, c1):
    """The 2, 3 or 4 halves of each cell ``[r0, r1] x [c0, c1]`` (an axis of span 1 is kept)."""
    rm, cm = (r0 + r1) // 2, (c0 + c1) // 2
    split_r, split_c = r1 - r0 > 1, c1 - c0 > 1
    rows = ((r0, np.where(split_r, rm, r1), np.ones_like(split_r)), (rm, r1, split_r))
    cols = ((c0, np.where(split_c, cm, c1), np.ones_like(split_c)), (cm, c1, split_c))
    out = [[], [], [], []]
    for a, b, ok_r in rows:
        for c, d, ok_c in cols:
            ok = ok_r & ok_c
            for lst, arr in zip(out, (a, b, c, d), strict=True):
                lst.append(arr[ok])
    return tuple(np.concatenate(lst) for lst in out)


def _trace_one(ev: _Evaluator, slc: Slice, step: int, certified: bool, lipschitz, safety):
    """One label map: returns ``(labels, evaluations, L, lipschitz_refined)``.

    Cells are index rectangles ``[r0, r1] x [c0, c1]`` of the grid; the coarse ones tile it
    (spans ``step``, the last row/column of cells shorter). Each level evaluates the corners
    of the children of the cells refined on the level before.
    """
    r = slc.resolution
    labels = np.full((r, r), -1, np.int32)
    gap = np.full((r, r), np.inf, np.float32)
    evaluated = np.zeros((r, r), bool)
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
    r0, c0 = (a.ravel() for a in np.meshgrid(x[:-1], x[:-1], indexing="ij"))
    r1, c1 = (a.ravel() for a in np.meshgrid(x[1:], x[1:], indexing="ij"))
    refined_by_l = 0
    coarse = True
    while r0.size:
        l00, l01, l10, l11 = labels[r0, c0], labels[r0, c1], labels[r1, c0], labels[r1, c1]
        mixed = (l00 != l01) | (l00 != l10) | (l00 != l11)
        splittable = (r1 - r0 > 1) | (c1 - c0 > 1)
        refine = mixed & splittable
        if certified:
            gmin = np.minimum(
                np.minimum(gap[r0, c0], gap[r0, c1]), np.minimum(gap[r1, c0], gap[r1, c1])
            )
            rho = 0.5 * np.hypot((r1 - r0) * spacing[1], (c1 - c0) * spacing[0])
            unsafe = ~mixed & splittable & ~(gmin > big_l * rho)
            refined_by_l += int(unsafe.sum())
            refine |= unsafe
        fill = splittable & ~refine  # uniform cells with points inside: take the corner label
        if coarse:  # every coarse cell: paint the grid (cell labels repeated over their spans)
            span = np.diff(x)
            cell_label = np.where(fill, l00, -1).reshape(len(span), len(span))
            span_last = span.copy()
            span_last[-1] += 1  # the last row/column of the grid belongs to the last cell
            painted = np.repeat(np.repeat(cell_label, span_last, 0), span_last, 1)
            mask = (painted >= 0) & ~evaluated
            labels[mask] = painted[mask]
            coarse = False
        elif fill.any():
            fr0, fr1, fc0, fc1, lab = r0[fill], r1[fill], c0[fill], c1[fill], l00[fill]
            h = int(max((fr1 - fr0).max(), (fc1 - fc0).max()))
            o = np.arange(h + 1)
            rows = fr0[:, None, None] + o[None, :, None]
            cols = fc0[:, None, None] + o[None, None, :]
            ok = (rows <= fr1[:, None, None]) & (cols <= fc1[:, None, None])
            rows, cols = np.broadcast_arrays(rows, cols)
            lab = np.broadcast_to(lab[:, None, None], rows.shape)
            rows, cols, lab = rows[ok], cols[ok], lab[ok]
            todo = ~evaluated[rows, cols]
            labels[rows[todo], cols[todo]] = lab[todo]
        r0, r1, c0, c1 = _children(r0[refine], r1[refine], c0[refine], c1[refine])
        pts = np.unique(np.concatenate([r0 * r + c0, r0 * r + c1, r1 * r + c0, r1 * r + c1]))
        pi, pj = np.divmod(pts, r)
        todo = ~evaluated[pi, pj]
        evaluate(pi[todo], pj[todo])
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
