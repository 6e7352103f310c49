"""Slice families: K planes drawn reproducibly from a PRNG key, and per-slice metrics over them.

One plane is a high-variance measurement of a classifier's decision geometry: the boundary
Jaccard distance of a quantized model on a single PCA plane can move by 0.1 between training
seeds. A *family* is K planes drawn from one distribution of planes; a slice metric measured
on each plane gives K values whose mean estimates the metric's expectation over that
distribution, with a standard error and a bootstrap interval over slices (the resampling unit,
:func:`bq_jax.stats.mean_estimate`).

:func:`slice_family` returns one stacked :class:`~bq_jax.geometry.Slice` (leading axis K) of a
kind in :data:`FAMILY_KINDS`:

* ``"pca"``: the planes through the data mean spanned by the principal components
  ``(v_{2k+1}, v_{2k+2})``, ``k = 0 .. K-1`` (plane 0 is :func:`~bq_jax.geometry.pca_slice`);
  deterministic, the key is not used; needs ``2K <= D``.
* ``"random"``: plane ``k`` is :func:`~bq_jax.geometry.random_slice` with key
  ``fold_in(key, k)``: a Haar-random orthonormal pair through the data mean, the grid over the
  projected data range plus ``padding``.
* ``"triplet"``: plane ``k`` passes through three distinct inputs of ``x`` drawn without
  replacement with ``fold_in(key, k)`` (:func:`~bq_jax.geometry.points_slice`), the "plane
  through three images" of decision-boundary reproducibility studies (Somepalli et al.,
  "Can Neural Nets Learn the Same Model Twice?", CVPR 2022); the grid spans the three points'
  bounding box plus ``padding``.
* ``"pair"``: plane ``k`` passes through two distinct random inputs, its second direction a
  uniformly random unit vector orthogonal to their difference (``points_slice`` with two
  points; the second axis spans the first axis' width, centred on the first input).

Plane ``k`` depends only on ``(key, k)`` (``jax.random.fold_in``), so the first K planes of a
family of K + 1 are the family of K. A draw that spans no plane (a coincident pair, a
collinear triplet: duplicate inputs) is redrawn with ``fold_in(fold_in(key, k), attempt)``.

:func:`family_metrics` measures V quantized variants against the float model on every plane in
one jitted call: a ``lax.map`` over the K planes, each swept by the same chunked engine as
:func:`~bq_jax.geometry.sweep_labels` and reduced to per-slice numbers before the next plane, so
memory is one plane's label maps whatever K is.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from bq_jax._src.checks import check_int
from bq_jax.geometry.engine import FAMILY_METRICS, run_family_metrics
from bq_jax.geometry.slices import (
    PCA_RANK_RTOL,
    Slice,
    pca_slice,
    points_slice,
    random_slice,
    stack_slices,
)

__all__ = ["FAMILY_KINDS", "FAMILY_METRICS", "MAX_DRAWS", "slice_family", "family_metrics"]

#: Kinds of :func:`slice_family`.
FAMILY_KINDS = ("pca", "random", "triplet", "pair")

#: Draws tried per plane of a ``"triplet"`` / ``"pair"`` family before giving up.
MAX_DRAWS = 64


def _batch(x) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise TypeError(f"x must be a real numeric array, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0 or 0 in x.shape[1:]:
        raise ValueError(f"x must be a non-empty batch [N, *input_shape], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains NaN or inf; slices need finite inputs")
    return x


def _spans_plane(flat: np.ndarray) -> bool:
    """Whether 2 distinct points (or 3 non-collinear ones) span a plane, by
    :func:`~bq_jax.geometry.points_slice`'s own test."""
    a = flat[1] - flat[0]
    na = np.linalg.norm(a)
    if na == 0:
        return False
    if len(flat) == 2:
        return True
    b = flat[2] - flat[0]
    e1 = a / na
    rest = b - (b @ e1) * e1
    return bool(np.linalg.norm(rest) > PCA_RANK_RTOL * max(na, np.linalg.norm(b)))


def _draw_points(key, x: np.ndarray, m: int) -> np.ndarray:
    """Indices of ``m`` distinct inputs that span a plane (redrawn up to :data:`MAX_DRAWS`)."""
    n = x.shape[0]
    for attempt in range(MAX_DRAWS):
        idx = np.asarray(
            jax.random.choice(jax.random.fold_in(key, attempt), n, (m,), replace=False)
        )
        if _spans_plane(x[idx].reshape(m, -1).astype(np.float64)):
            return idx
    raise ValueError(
        f"slice_family could not draw {m} inputs spanning a plane in {MAX_DRAWS} tries (are the "
        "inputs (nearly) all identical?)"
    )


def slice_family(
    key: jax.Array,
    x,
    *,
    kind: str,
    count: int,
    resolution: int,
    padding: float = 0.1,
) -> Slice:
    """K planes of ``kind`` through the inputs ``x``, drawn from ``key``, as one stacked Slice.

    Args:
        key: PRNG key (``jax.random.key`` or ``PRNGKey``); plane ``k`` uses
            ``fold_in(key, k)``. Unused by ``"pca"``.
        x: inputs ``[N, *input_shape]`` the planes are drawn from (one data split).
        kind: one of :data:`FAMILY_KINDS` (see the module docstring).
        count: number of planes K >= 1 (``"pca"``: ``2K <= D``; ``"triplet"``: ``N >= 3``;
            ``"pair"``: ``N >= 2``).
        resolution: grid points per axis R >= 2.
        padding: fraction of the grid's span added on each side (>= 0).

    Returns:
        A stacked :class:`Slice` with ``num_slices == count``.

    Raises:
        ValueError: unknown ``kind``, ``count`` < 1 or too large for the data, NaN/inf inputs,
            inputs that span no plane.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
        >>> fam = slice_family(jax.random.key(0), x, kind="triplet", count=4, resolution=16)
        >>> fam.num_slices, fam.basis.shape
        (4, (4, 6, 2))
    """
    if kind not in FAMILY_KINDS:
        raise ValueError(f"kind must be one of {FAMILY_KINDS}, got {kind!r}")
    count = check_int("count", count, 1)
    resolution = check_int("resolution", resolution, 2)
    x = _batch(x)
    n, d = x.shape[0], int(np.prod(x.shape[1:]))
    if kind == "pca":
        return _pca_family(x, count, resolution, padding)
    need = {"random": 1, "triplet": 3, "pair": 2}[kind]
    if n < need:
        raise ValueError(f"a {kind!r} family needs at least {need} inputs, got N = {n}")
    if d < 2:
        raise ValueError(f"slice_family needs inputs of dimension D >= 2, got D = {d}")
    slices = []
    for k in range(count):
        kk = jax.random.fold_in(key, k)
        if kind == "random":
            slices.append(random_slice(kk, x, resolution=resolution, padding=padding))
        elif kind == "triplet":
            i = _draw_points(kk, x, 3)
            slices.append(
                points_slice(x[i[0]], x[i[1]], x[i[2]], resolution=resolution, padding=padding)
            )
        else:
            i = _draw_points(jax.random.fold_in(kk, 0), x, 2)
            slices.append(
                points_slice(
                    x[i[0]],
                    x[i[1]],
                    resolution=resolution,
                    padding=padding,
                    key=jax.random.fold_in(kk, 1),
                )
            )
    return stack_slices(slices)


def _pca_family(x: np.ndarray, count: int, resolution: int, padding: float) -> Slice:
    """Planes of principal components (1, 2), (3, 4), ... through the mean (float64 PCA)."""
    first = pca_slice(x, resolution=resolution, padding=padding)
    if count == 1:
        return stack_slices([first])
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    n, d = flat.shape
    if 2 * count > d:
        raise ValueError(f"a 'pca' family of {count} planes needs D >= {2 * count}, got D = {d}")
    mu = flat.mean(axis=0)
    xc = flat - mu
    _, sv, vt = np.linalg.svd(xc, full_matrices=False)
    if len(sv) < 2 * count or sv[2 * count - 1] <= PCA_RANK_RTOL * sv[0]:
        raise ValueError(
            f"a 'pca' family of {count} planes needs data of centred rank >= {2 * count}, got "
            f"singular values {np.array2string(sv[: 2 * count], precision=3)}"
        )
    slices = [first]
    for k in range(1, count):
        basis = vt[2 * k : 2 * k + 2].T
        idx = np.argmax(np.abs(basis), axis=0)
        basis = basis * np.sign(basis[idx, np.arange(2)])  # largest entry positive
        u = xc @ basis
        lo, hi = u.min(axis=0), u.max(axis=0)
        pad = float(padding) * (hi - lo)
        slices.append(
            Slice(
                origin=mu.astype(np.float32),
                basis=basis.astype(np.float32),
                u_min=(lo - pad).astype(np.float32),
                u_max=(hi + pad).astype(np.float32),
                resolution=resolution,
                input_shape=x.shape[1:],
            )
        )
    return stack_slices(slices)


def family_metrics(
    apply_fn: Callable,
    float_params,
    params_stack,
    family: Slice,
    *,
    chunk_size: int | None = None,
    variant_batching: str = "auto",
) -> dict[str, np.ndarray]:
    """Per-slice metrics of V variants against the float model on every plane of a family.

    On plane ``s`` with float label map ``L_F`` and variant map ``L_v`` (both from the engine of
    :func:`~bq_jax.geometry.sweep_labels`):
    ``boundary_jaccard_distance[s, v] = 1 - |B(L_F) and B(L_v)| / |B(L_F) or B(L_v)|``,
    ``grid_change[s, v] = mean [L_F != L_v]``, ``triple_junction_count[s, v]`` the 2x2 cells
    of ``L_v`` with >= 3 labels, ``float_triple_junction_count[s]`` those of ``L_F``. One jitted
    call; only these ``[K, V]`` numbers are kept, so memory does not grow with K.

    Args:
        apply_fn: ``apply_fn(params, x[N, *input_shape]) -> logits[N, K]``, pure.
        float_params: the float model's parameters (no variant axis).
        params_stack: pytree whose leaves share a leading variant axis V.
        family: a stacked Slice (e.g. :func:`slice_family`) or a single one.
        chunk_size, variant_batching: as in :func:`~bq_jax.geometry.sweep_labels`.

    Returns:
        dict of numpy arrays: each name of :data:`FAMILY_METRICS` -> ``[K, V]``,
        ``float_triple_junction_count`` -> ``[K]``.

    Example:
        >>> def apply_fn(params, x):
        ...     return x @ params["w"]
        >>> w = np.eye(2, 3, dtype=np.float32)
        >>> x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
        >>> fam = slice_family(jax.random.key(0), x, kind="random", count=3, resolution=16)
        >>> m = family_metrics(apply_fn, {"w": w}, {"w": np.stack([w, 2 * w])}, fam)
        >>> m["boundary_jaccard_distance"].tolist()  # scaling the logits moves no boundary
        [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    """
    return run_family_metrics(
        apply_fn, float_params, params_stack, family, chunk_size, variant_batching
    )
