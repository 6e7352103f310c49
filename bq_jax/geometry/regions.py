"""Shape of decision regions: fragmentation of slice label maps and class skips along segments.

Two views of how a decision region is shaped, beside the boundary metrics of
:mod:`~bq_jax.geometry.metrics` (which say *where* the boundary is):

* **Fragmentation** of a label map: how many connected regions each class occupies on the
  slice grid. A *region* is a maximal set of grid points of one class that is connected under
  **8-connectivity** (two points are neighbours when they differ by at most one row and at most
  one column, so diagonal contact connects). ``excess_fragments = regions - classes present``:
  0 when every class on the map is one connected region, ``n`` when ``n`` extra islands or
  fragments exist. The count is the number of components ``scipy.ndimage.label`` finds in each
  class's indicator with the 3 x 3 structure ``np.ones((3, 3))``.
* **Class skips** along a segment between two inputs: the labels at ``S`` points
  ``x(t) = (1 - t) x0 + t x1`` (the point ``x0 + t (x1 - x0)``, written so that ``t = 0`` and
  ``t = 1`` give exactly ``x0`` and ``x1``), ``t = s / (S - 1)``, ``s = 0 .. S - 1``. For the
  label sequence ``y_0 .. y_{S-1}``:

  - ``label_changes = #{s : y_{s+1} != y_s}``;
  - ``classes_visited = #{distinct y_s}``;
  - ``class_skips = label_changes - [y_0 != y_{S-1}]``: the label changes beyond the one a
    direct path from ``label(x0)`` to ``label(x1)`` needs (none when both ends share a label).
    It is >= 0, and 0 exactly when the sampled labels change at most once.

  Sampling at S points sees only changes between samples: a region thinner than the spacing
  ``|x1 - x0| / (S - 1)`` can be missed, so always report ``S`` with the counts.

Sources: counting connected decision regions on a 2-D plane of input space follows the
decision-region ("fragmentation") plots of decision-boundary reproducibility studies (Somepalli
et al., "Can Neural Nets Learn the Same Model Twice?", CVPR 2022); the exact definitions above
(8-connectivity on the slice grid, excess fragments, class skips along sampled segments) are
this project's.

Float vs quantized: :func:`~bq_jax.geometry.compare` adds the fragmentation of both maps on its
slice and, given pairs of inputs, the class skips of both models
(see :data:`~bq_jax.geometry.compare.SEGMENT_KEYS`).

Connected components are found by min-label propagation with root hooking and pointer jumping
(one jitted ``lax.while_loop`` per map, ``vmap`` over leading axes): every point starts with its
own flat index; each round gives every point the least label among its same-class 8-neighbours,
lowers the label of that point's current representative to it (``L[L[p]] = min(L[L[p]], m[p])``)
and then replaces every label by its label's label until nothing changes. Labels only ever fall
and always name a point of the same region, so at the fixed point every region carries the flat
index of its first point (row-major), and the regions are counted by their roots ``L[p] = p``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bq_jax._src.checks import check_int
from bq_jax.geometry.engine import run_eval

__all__ = [
    "Fragmentation",
    "ClassSkips",
    "DEFAULT_SEGMENT_POINTS",
    "connected_components",
    "region_counts",
    "fragmentation",
    "class_skips",
    "segment_points",
    "segment_labels",
    "segment_class_skips",
]

#: Points S per segment of :func:`segment_labels` and :func:`~bq_jax.geometry.compare` (64: the
#: spacing is 1/63 of the segment, finer than the slice grid's spacing across the data range at
#: R = 48 and about that of R = 64 for a segment between two typical inputs).
DEFAULT_SEGMENT_POINTS = 64

# The 8 neighbour offsets (di, dj) of 8-connectivity.
_OFFSETS = tuple((di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0))


class Fragmentation(NamedTuple):
    """Connected regions of label maps (8-connectivity), see :func:`fragmentation`."""

    # int32[..., K]: connected regions of each class k (0 for a class absent from the map).
    region_counts: jax.Array
    # int32[...]: all regions of the map, the sum of region_counts.
    region_count: jax.Array
    # int32[...]: classes with at least one grid point on the map.
    classes_present: jax.Array
    # int32[...]: region_count - classes_present (0: every class present is one region).
    excess_fragments: jax.Array


class ClassSkips(NamedTuple):
    """Label changes along label sequences, see :func:`class_skips`."""

    # int32[...]: #{s : y_{s+1} != y_s}.
    label_changes: jax.Array
    # int32[...]: number of distinct labels in the sequence.
    classes_visited: jax.Array
    # int32[...]: label_changes - [y_0 != y_{S-1}] (changes beyond a direct path's).
    class_skips: jax.Array


# -- connected components ---------------------------------------------------------------------


def _check_map(labels, name: str = "labels") -> jax.Array:
    labels = jnp.asarray(labels)
    if labels.ndim < 2 or labels.shape[-1] < 1 or labels.shape[-2] < 1:
        raise ValueError(f"{name} must be a label map [..., R, R], got shape {labels.shape}")
    if labels.dtype == jnp.bool_:
        return labels.astype(jnp.int32)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"{name} must be an integer label map [..., R, R] (e.g. sweep_labels, or the argmax "
            f"of logits [..., R, R, K] over the class axis), got dtype {labels.dtype}"
        )
    if labels.shape[-1] * labels.shape[-2] >= 2**31 - 1:
        raise ValueError(f"{name} has too many grid points for int32 indices: {labels.shape}")
    return labels.astype(jnp.int32)


def _neighbours(x: jax.Array, fill) -> jax.Array:
    """``[8, R, C]``: ``out[k, i, j] = x[i + di_k, j + dj_k]`` inside the grid, else ``fill``."""
    r, c = x.shape
    padded = jnp.pad(x, ((1, 1), (1, 1)), constant_values=fill)
    return jnp.stack(
        [lax.slice(padded, (1 + di, 1 + dj), (1 + di + r, 1 + dj + c)) for di, dj in _OFFSETS]
    )


def _components_one(labels: jax.Array) -> jax.Array:
    """int32[R, C]: flat index of the first (row-major) point of each point's region."""
    r, c = labels.shape
    n = r * c
    # same[k, i, j]: the k-th neighbour of (i, j) exists and carries the same class
    same = _neighbours(jnp.ones((r, c), bool), False) & (
        _neighbours(labels, 0) == jnp.expand_dims(labels, 0)
    )
    big = jnp.int32(n)

    def neighbour_min(flat):
        grid = flat.reshape(r, c)
        m = jnp.min(jnp.where(same, _neighbours(grid, big), big), axis=0)
        return jnp.minimum(grid, m).reshape(n)

    def compress(flat):
        def body(state):
            f, _ = state
            g = f[f]
            return g, jnp.any(g != f)

        return lax.while_loop(lambda s: s[1], body, (flat, jnp.bool_(True)))[0]

    def body(state):
        flat, _ = state
        m = neighbour_min(flat)
        new = flat.at[flat].min(m)  # hook each point's representative to its neighbours' least
        new = compress(jnp.minimum(new, m))
        return new, jnp.any(new != flat)

    index = jnp.arange(n, dtype=jnp.int32)
    flat, _ = lax.while_loop(lambda s: s[1], body, (index, jnp.bool_(True)))
    return flat.reshape(r, c)


@jax.jit
def _components(labels: jax.Array) -> jax.Array:
    lead = labels.shape[:-2]
    flat = labels.reshape((math.prod(lead),) + labels.shape[-2:])
    return jax.vmap(_components_one)(flat).reshape(labels.shape)


@functools.partial(jax.jit, static_argnames="num_classes")
def _count_roots(labels: jax.Array, comp: jax.Array, *, num_classes: int) -> jax.Array:
    """int32[..., K]: regions of each class, counted by their roots ``comp == flat index``."""
    r, c = labels.shape[-2:]
    index = jnp.arange(r * c, dtype=jnp.int32).reshape(r, c)
    roots = comp == index.reshape((1,) * (labels.ndim - 2) + (r, c))
    classes = jnp.arange(num_classes, dtype=jnp.int32)
    is_k = jnp.expand_dims(labels, -1) == classes.reshape((1,) * labels.ndim + (num_classes,))
    return jnp.sum(is_k & jnp.expand_dims(roots, -1), axis=(-3, -2), dtype=jnp.int32)


def _check_classes(labels: jax.Array, num_classes: int) -> None:
    """Labels must lie in [0, num_classes) (checked when the values are known, i.e. not traced)."""
    if isinstance(labels, jax.core.Tracer):
        return
    lo, hi = int(jnp.min(labels)), int(jnp.max(labels))
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"labels must be class indices in [0, num_classes) = [0, {num_classes}), got values "
            f"from {lo} to {hi}"
        )


def connected_components(labels) -> jax.Array:
    """int32[..., R, R]: the region of every grid point, under 8-connectivity.

    Each point gets the flat (row-major) index ``i * R + j`` of the first point of its region, a
    region being a maximal 8-connected set of points of one label (points whose rows and columns
    both differ by at most one are neighbours). Leading axes are batch axes. Pure and jit-able;
    the algorithm (min-label propagation with hooking and pointer jumping) is in the module
    docstring.

    Example:
        >>> connected_components(jnp.array([[0, 1, 0], [1, 0, 1], [0, 1, 1]])).tolist()
        [[0, 1, 0], [1, 0, 1], [0, 1, 1]]
    """
    return _components(_check_map(labels))


def region_counts(labels, *, num_classes: int) -> jax.Array:
    """int32[..., K]: number of 8-connected regions of each class on label maps ``[..., R, R]``.

    ``out[..., k]`` counts the maximal sets of grid points of label ``k`` that are connected
    when every point touches its 8 neighbours (diagonal contact connects), i.e. the components
    ``scipy.ndimage.label(labels == k, structure=np.ones((3, 3)))`` finds; 0 for a class absent
    from the map.

    Args:
        labels: int (or bool) label maps ``[..., R, R]``; leading axes are batch axes.
        num_classes: K (static); labels must lie in ``[0, K)``. Checked when ``labels`` is a
            concrete array; under an outer ``jit`` a label outside the range is counted in no
            class.

    Raises:
        ValueError: a map that is not ``[..., R, R]`` or labels outside ``[0, K)``.
        TypeError: float labels (logits: take the argmax first).

    Example:
        >>> checker = jnp.array([[0, 1], [1, 0]])  # each class touches itself diagonally
        >>> region_counts(checker, num_classes=3).tolist()
        [1, 1, 0]
        >>> region_counts(jnp.array([[0, 1, 0]]), num_classes=2).tolist()
        [2, 1]
    """
    labels = _check_map(labels)
    num_classes = check_int("num_classes", num_classes, 1)
    _check_classes(labels, num_classes)
    # two jitted calls: the components compile once per map shape, whatever num_classes is
    return _count_roots(labels, _components(labels), num_classes=num_classes)


def fragmentation(labels, *, num_classes: int) -> Fragmentation:
    """Connected regions of label maps: per class, in total, and beyond one per class present.

    ``region_counts`` as :func:`region_counts` (8-connectivity); ``region_count`` their sum;
    ``classes_present = #{k : region_counts[k] > 0}``;
    ``excess_fragments = region_count - classes_present``, the regions beyond one per class
    present (0: each class on the map is one connected region).

    Args:
        labels: int label maps ``[..., R, R]``.
        num_classes: K (static); labels in ``[0, K)``.

    Returns:
        :class:`Fragmentation` of int32 arrays, ``[..., K]`` and ``[...]``.

    Example:
        >>> f = fragmentation(jnp.array([[0, 1, 0], [0, 1, 1], [2, 2, 1]]), num_classes=3)
        >>> f.region_counts.tolist(), int(f.region_count), int(f.excess_fragments)
        ([2, 1, 1], 4, 1)
    """
    counts = region_counts(labels, num_classes=num_classes)
    total = jnp.sum(counts, axis=-1, dtype=jnp.int32)
    present = jnp.sum(counts > 0, axis=-1, dtype=jnp.int32)
    return Fragmentation(counts, total, present, total - present)


# -- class skips along segments ---------------------------------------------------------------


@jax.jit
def _skips(seq: jax.Array) -> ClassSkips:
    changes = jnp.sum(seq[..., 1:] != seq[..., :-1], axis=-1, dtype=jnp.int32)
    s = jnp.sort(seq, axis=-1)
    visited = 1 + jnp.sum(s[..., 1:] != s[..., :-1], axis=-1, dtype=jnp.int32)
    direct = (seq[..., 0] != seq[..., -1]).astype(jnp.int32)
    return ClassSkips(changes, visited, changes - direct)


def class_skips(labels) -> ClassSkips:
    """Label changes, classes visited and class skips of label sequences ``int[..., S]``.

    For ``y_0 .. y_{S-1}`` (the last axis; leading axes are batch axes):
    ``label_changes = #{s : y_{s+1} != y_s}``, ``classes_visited = #{distinct y_s}`` and
    ``class_skips = label_changes - [y_0 != y_{S-1}]``, the changes beyond the single one (or
    none, when the ends agree) that a direct path from ``y_0`` to ``y_{S-1}`` needs.
    ``class_skips`` is >= 0; ``classes_visited - 1 <= label_changes``.

    Raises:
        ValueError: an empty sequence. TypeError: float values (take the argmax first).

    Example:
        >>> r = class_skips(jnp.array([[0, 0, 1, 1], [0, 2, 1, 1], [3, 1, 3, 3]]))
        >>> r.label_changes.tolist(), r.classes_visited.tolist(), r.class_skips.tolist()
        ([1, 2, 2], [2, 3, 2], [0, 1, 2])
    """
    seq = jnp.asarray(labels)
    if seq.ndim < 1 or seq.shape[-1] < 1:
        raise ValueError(f"labels must be label sequences [..., S] with S >= 1, got {seq.shape}")
    if not (jnp.issubdtype(seq.dtype, jnp.integer) or seq.dtype == jnp.bool_):
        raise TypeError(f"labels must be integer class labels [..., S], got dtype {seq.dtype}")
    return _skips(seq.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames="num_points")
def _segment_points(x0, x1, *, num_points: int):
    t = jnp.linspace(0.0, 1.0, num_points, dtype=jnp.float32)
    t = t.reshape((1, num_points) + (1,) * (x0.ndim - 1))
    a, b = jnp.expand_dims(x0, 1), jnp.expand_dims(x1, 1)
    return (1.0 - t) * a + t * b


def _check_pairs(x0, x1):
    x0, x1 = jnp.asarray(x0), jnp.asarray(x1)
    if x0.shape != x1.shape or x0.ndim < 2 or x0.shape[0] < 1:
        raise ValueError(
            "x0 and x1 must be non-empty input batches of one shape [P, *input_shape] (pair p is "
            f"x0[p], x1[p]), got shapes {x0.shape} and {x1.shape}"
        )
    if not (jnp.issubdtype(x0.dtype, jnp.floating) and jnp.issubdtype(x1.dtype, jnp.floating)):
        raise TypeError(f"x0 and x1 must be float inputs, got {x0.dtype} and {x1.dtype}")
    for name, x in (("x0", x0), ("x1", x1)):
        if not isinstance(x, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(x))):
            raise ValueError(f"{name} (segment end points) contains NaN or inf")
    return x0.astype(jnp.float32), x1.astype(jnp.float32)


def segment_points(x0, x1, *, num_points: int = DEFAULT_SEGMENT_POINTS) -> jax.Array:
    """float32[P, S, *input_shape]: ``S`` equally spaced points on each segment ``[x0[p], x1[p]]``.

    ``x(t) = (1 - t) x0 + t x1`` at ``t = s / (S - 1)``, ``s = 0 .. S - 1`` (the point
    ``x0 + t (x1 - x0)``; both ends are exactly ``x0`` and ``x1``).

    Example:
        >>> segment_points(jnp.zeros((1, 2)), jnp.ones((1, 2)), num_points=3)[0].tolist()
        [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]
    """
    x0, x1 = _check_pairs(x0, x1)
    num_points = check_int("num_points", num_points, 2)
    return _segment_points(x0, x1, num_points=num_points)


def segment_labels(
    apply_fn: Callable,
    params_stack,
    x0,
    x1,
    *,
    num_points: int = DEFAULT_SEGMENT_POINTS,
    chunk_size: int | None = None,
    variant_batching: str = "auto",
    mesh=None,
) -> jax.Array:
    """int32[V, P, S]: labels ``argmax_k z`` of V variants at S points of P segments.

    The ``P * S`` points of :func:`segment_points` are evaluated in one jitted, chunked call of
    the engine behind :func:`~bq_jax.geometry.evaluate_logits` (same ``chunk_size``,
    ``variant_batching`` and ``mesh``); NaN/inf logits raise, naming the variants.

    Args:
        apply_fn: ``apply_fn(params, x[N, *input_shape]) -> logits[N, K]``.
        params_stack: pytree whose leaves share a leading variant axis V.
        x0, x1: segment ends ``[P, *input_shape]`` (pair p runs from ``x0[p]`` to ``x1[p]``).
        num_points: S >= 2 points per segment, both ends included.

    Example:
        >>> import numpy as np
        >>> def apply_fn(params, x):
        ...     return x @ params["w"]
        >>> stack = {"w": np.stack([np.eye(2, dtype=np.float32)])}
        >>> x0, x1 = np.array([[1.0, 0.0]], np.float32), np.array([[0.0, 1.0]], np.float32)
        >>> segment_labels(apply_fn, stack, x0, x1, num_points=4)[0].tolist()
        [[0, 0, 1, 1]]
    """
    pts = segment_points(x0, x1, num_points=num_points)
    p, s = pts.shape[:2]
    z = run_eval(
        apply_fn,
        params_stack,
        pts.reshape((p * s,) + pts.shape[2:]),
        chunk_size,
        variant_batching,
        True,
        None,
        mesh,
    )
    return jnp.argmax(z, axis=-1).astype(jnp.int32).reshape(z.shape[0], p, s)


def segment_class_skips(
    apply_fn: Callable,
    params_stack,
    x0,
    x1,
    *,
    num_points: int = DEFAULT_SEGMENT_POINTS,
    chunk_size: int | None = None,
    variant_batching: str = "auto",
    mesh=None,
) -> ClassSkips:
    """:func:`class_skips` of every variant along every segment: each field int32[V, P].

    The labels are :func:`segment_labels` (same arguments). To compare float and quantized
    models, put the float model first in the stack and compare row 0 with the others (as
    :func:`~bq_jax.geometry.compare` does with ``segment_pairs``).

    Example:
        >>> import numpy as np
        >>> def apply_fn(params, x):  # three classes: z = (x1, x2, 0.6)
        ...     return jnp.concatenate([x, jnp.full_like(x[:, :1], 0.6)], axis=1) @ params["w"]
        >>> stack = {"w": np.stack([np.eye(3, dtype=np.float32)])}
        >>> x0, x1 = np.array([[1.0, 0.0]], np.float32), np.array([[0.0, 1.0]], np.float32)
        >>> r = segment_class_skips(apply_fn, stack, x0, x1, num_points=11)
        >>> r.label_changes.tolist(), r.classes_visited.tolist(), r.class_skips.tolist()
        ([[2]], [[3]], [[1]])
    """
    labels = segment_labels(
        apply_fn,
        params_stack,
        x0,
        x1,
        num_points=num_points,
        chunk_size=chunk_size,
        variant_batching=variant_batching,
        mesh=mesh,
    )
    return _skips(labels)
