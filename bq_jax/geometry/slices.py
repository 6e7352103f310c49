"""Two-dimensional slices of input space: the plane ``x(u) = mu + P u`` and an R x R grid on it.

A :class:`Slice` is a pytree: the arrays (origin, basis, grid bounds) are leaves, the grid
resolution and the model's input shape are static, so a jitted sweep retraces only when the
resolution or the input shape changes, never when the plane moves.

Grid convention (shared with ``bq_jax.report``): grid point ``[i, j]`` sits at slice
coordinates ``u = (u1[j], u2[i])`` -- column ``j`` runs along the first basis vector, row
``i`` along the second -- with ``u1 = linspace(u_min[0], u_max[0], R)`` and
``u2 = linspace(u_min[1], u_max[1], R)``. Flattened point ``p = i * R + j``.

Inputs are handled flattened (``D = prod(input_shape)``); :meth:`Slice.to_input` reshapes
points back to ``input_shape`` for the model (images stay NHWC).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bq_jax._src.checks import check_int

__all__ = [
    "Slice",
    "ORTHONORMAL_ATOL",
    "PCA_RANK_RTOL",
    "pca_slice",
    "random_slice",
    "points_slice",
    "stack_slices",
]

#: Largest accepted ``max |P^T P - I|`` for a slice basis (float32 storage of an exactly
#: orthonormal float64 basis is ~1e-7 off).
ORTHONORMAL_ATOL = 1e-5

#: :func:`pca_slice` calls the data rank-deficient when the second principal standard deviation
#: is at most this fraction of the first (float32 inputs carry ~1e-7 relative rounding noise).
PCA_RANK_RTOL = 1e-5


def _check_padding(padding) -> float:
    padding = float(padding)
    if not (math.isfinite(padding) and padding >= 0.0):
        raise ValueError(
            f"padding must be a finite float >= 0 (fraction of the range), got {padding}"
        )
    return padding


def _is_concrete(x) -> bool:
    return isinstance(x, (np.ndarray, np.generic)) or (
        isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
    )


@functools.partial(jax.jit, static_argnames="resolution")
def _coords(u_min, u_max, resolution):
    t = jnp.linspace(0.0, 1.0, resolution, dtype=jnp.float32)
    t = t.reshape((1,) * (u_min.ndim - 1) + (resolution,))

    def axis(k):
        a = jnp.expand_dims(u_min[..., k], -1)
        b = jnp.expand_dims(u_max[..., k], -1)
        return a + (b - a) * t

    return axis(0), axis(1)


@functools.partial(jax.jit, static_argnames="resolution")
def _grid_u(u_min, u_max, resolution):
    u1, u2 = _coords(u_min, u_max, resolution)
    r = resolution
    lead = u1.shape[:-1]
    a = jnp.broadcast_to(jnp.expand_dims(u1, -2), (*lead, r, r))
    b = jnp.broadcast_to(jnp.expand_dims(u2, -1), (*lead, r, r))
    return jnp.stack([a, b], axis=-1)


@jax.jit
def _to_flat(origin, basis, u):
    lead = (1,) * (u.ndim - 1)
    d = origin.shape[-1]
    o = origin.reshape(lead + (d,))
    p0 = basis[:, 0].reshape(lead + (d,))
    p1 = basis[:, 1].reshape(lead + (d,))
    return o + u[..., 0:1] * p0 + u[..., 1:2] * p1


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Slice:
    """A plane ``x(u) = origin + basis @ u`` in flattened input space with an R x R grid.

    Fields may carry a leading slice axis ``S`` (a stack of slices, see :func:`stack_slices`);
    ``resolution`` and ``input_shape`` are then shared.

    Example:
        >>> import numpy as np
        >>> slc = Slice(origin=np.zeros(3, np.float32), basis=np.eye(3, 2, dtype=np.float32),
        ...             u_min=np.array([-1.0, -1.0], np.float32),
        ...             u_max=np.array([1.0, 1.0], np.float32), resolution=3, input_shape=(3,))
        >>> np.asarray(slc.points())[4]  # the centre of the grid
        array([0., 0., 0.], dtype=float32)
    """

    #: float32[(S,) D] point of the plane at u = (0, 0).
    origin: jax.Array
    #: float32[(S,) D, 2] orthonormal columns spanning the plane.
    basis: jax.Array
    #: float32[(S,) 2] slice coordinates (u1, u2) of the first grid point.
    u_min: jax.Array
    #: float32[(S,) 2] slice coordinates (u1, u2) of the last grid point.
    u_max: jax.Array
    #: grid points per axis R (static).
    resolution: int
    #: shape of one model input (static); prod(input_shape) == D.
    input_shape: tuple[int, ...]

    def __post_init__(self):
        check_int("resolution", self.resolution, 2)
        shape = tuple(int(s) for s in self.input_shape)
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"input_shape must be a non-empty tuple of ints >= 1, got {shape}")
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "resolution", int(self.resolution))
        d = math.prod(shape)
        o, p, lo, hi = self.origin, self.basis, self.u_min, self.u_max
        lead = np.shape(o)[:-1]
        if np.shape(o) != (*lead, d) or len(lead) > 1:
            raise ValueError(
                f"origin must have shape (D,) or (S, D) with D = prod(input_shape) = {d}, "
                f"got {np.shape(o)}"
            )
        if np.shape(p) != (*lead, d, 2):
            raise ValueError(f"basis must have shape {(*lead, d, 2)}, got {np.shape(p)}")
        for name, v in (("u_min", lo), ("u_max", hi)):
            if np.shape(v) != (*lead, 2):
                raise ValueError(f"{name} must have shape {(*lead, 2)}, got {np.shape(v)}")
        if not all(_is_concrete(v) for v in (o, p, lo, hi)):
            return  # abstract values (inside a transformation): shapes checked only
        arrays = {
            k: np.asarray(v, np.float64)
            for k, v in zip(("origin", "basis", "u_min", "u_max"), (o, p, lo, hi), strict=True)
        }
        for k, v in arrays.items():
            if not np.all(np.isfinite(v)):
                raise ValueError(f"Slice {k} must be finite, got NaN or inf")
        pa = arrays["basis"]
        gram = np.swapaxes(pa, -1, -2) @ pa
        err = float(np.max(np.abs(gram - np.eye(2))))
        if err > ORTHONORMAL_ATOL:
            raise ValueError(
                f"basis columns must be orthonormal (max |P^T P - I| <= {ORTHONORMAL_ATOL}), "
                f"got max |P^T P - I| = {err:.3g}"
            )
        if np.any(arrays["u_max"] <= arrays["u_min"]):
            raise ValueError(
                f"u_max must exceed u_min on both axes, got u_min={arrays['u_min']}, "
                f"u_max={arrays['u_max']}"
            )
        for k in ("origin", "basis", "u_min", "u_max"):
            object.__setattr__(self, k, jnp.asarray(arrays[k], jnp.float32))

    # -- pytree -------------------------------------------------------------------------------
    def tree_flatten(self):
        return (self.origin, self.basis, self.u_min, self.u_max), (
            self.resolution,
            self.input_shape,
        )

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)  # no validation: leaves may be tracers or placeholders
        for k, v in zip(("origin", "basis", "u_min", "u_max"), children, strict=True):
            object.__setattr__(obj, k, v)
        object.__setattr__(obj, "resolution", aux[0])
        object.__setattr__(obj, "input_shape", aux[1])
        return obj

    # -- shape information --------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """D, the flattened input dimension."""
        return math.prod(self.input_shape)

    @property
    def num_points(self) -> int:
        """R * R grid points per slice."""
        return self.resolution * self.resolution

    @property
    def stacked(self) -> bool:
        """Whether the fields carry a leading slice axis S."""
        return np.ndim(self.origin) == 2

    @property
    def num_slices(self) -> int:
        """S for a stacked slice, 1 otherwise."""
        return int(np.shape(self.origin)[0]) if self.stacked else 1

    @property
    def extent(self) -> np.ndarray:
        """float64[(S,) 4] ``(u_min, u_max, v_min, v_max)``: coordinates of the first/last grid
        points along the first (columns) and second (rows) axis, as ``bq_jax.report`` expects."""
        lo, hi = np.asarray(self.u_min, np.float64), np.asarray(self.u_max, np.float64)
        return np.stack([lo[..., 0], hi[..., 0], lo[..., 1], hi[..., 1]], axis=-1)

    def __getitem__(self, s) -> Slice:
        """Slice ``s`` of a stacked slice."""
        if not self.stacked:
            raise TypeError("indexing needs a stacked Slice (leading axis S); this one is single")
        return Slice(
            origin=np.asarray(self.origin)[s],
            basis=np.asarray(self.basis)[s],
            u_min=np.asarray(self.u_min)[s],
            u_max=np.asarray(self.u_max)[s],
            resolution=self.resolution,
            input_shape=self.input_shape,
        )

    # -- coordinates and points ---------------------------------------------------------------
    def coords(self) -> tuple[jax.Array, jax.Array]:
        """``(u1, u2)``: float32[(S,) R] grid coordinates along the columns and the rows,
        ``u_k = u_min[k] + (u_max[k] - u_min[k]) * linspace(0, 1, R)``."""
        return _coords(self.u_min, self.u_max, self.resolution)

    def grid_u(self) -> jax.Array:
        """float32[(S,) R, R, 2]: slice coordinates ``(u1[j], u2[i])`` of grid point ``[i, j]``."""
        return _grid_u(self.u_min, self.u_max, self.resolution)

    def to_flat(self, u) -> jax.Array:
        """float32[..., D] flattened inputs ``origin + basis @ u`` for ``u`` float[..., 2].

        For a single slice only (index a stacked one first). Computed as
        ``origin + u1 * P[:, 0] + u2 * P[:, 1]`` elementwise, so every point's value is the same
        whichever batch it is computed in.
        """
        if self.stacked:
            raise TypeError("to_flat/to_input need a single Slice; index the stacked one first")
        u = jnp.asarray(u, jnp.float32)
        if u.shape[-1:] != (2,):
            raise ValueError(f"u must have a last axis of size 2, got shape {u.shape}")
        return _to_flat(self.origin, self.basis, u)

    def to_input(self, u) -> jax.Array:
        """float32[..., *input_shape]: the inputs at slice coordinates ``u`` float[..., 2]."""
        x = self.to_flat(u)
        return x.reshape(x.shape[:-1] + self.input_shape)

    def points(self, *, flat: bool = True) -> jax.Array:
        """All grid points: float32[R*R, D] (``flat``) or float32[R, R, *input_shape].

        Point ``p = i * R + j`` of the flat form is grid point ``[i, j]``. Memory grows as
        ``R^2 D``; the sweeps never build this array (they generate points chunk by chunk).
        """
        x = self.to_flat(self.grid_u())
        if flat:
            return x.reshape(self.num_points, self.dim)
        return x.reshape((self.resolution, self.resolution) + self.input_shape)

    def project(self, x) -> np.ndarray:
        """float32[N, 2]: slice coordinates ``P^T (x - origin)`` of inputs ``x[N, *input_shape]``
        (their orthogonal projection onto the plane), e.g. to draw data on a boundary map."""
        if self.stacked:
            raise TypeError("project needs a single Slice; index the stacked one first")
        flat = _flatten_batch(x, "x", self.input_shape)
        o = np.asarray(self.origin, np.float64)
        return ((flat - o) @ np.asarray(self.basis, np.float64)).astype(np.float32)


def stack_slices(slices: Sequence[Slice]) -> Slice:
    """One stacked :class:`Slice` (leading axis S) from single slices of equal R and input shape.

    Example:
        >>> import jax
        >>> x = np.random.default_rng(0).normal(size=(20, 3))
        >>> both = stack_slices([pca_slice(x, resolution=8),
        ...                      random_slice(jax.random.key(0), x, resolution=8)])
        >>> both.num_slices, both.basis.shape
        (2, (2, 3, 2))
    """
    slices = list(slices)
    if not slices or not all(isinstance(s, Slice) and not s.stacked for s in slices):
        raise TypeError("stack_slices needs a non-empty sequence of single (unstacked) Slices")
    keys = {(s.resolution, s.input_shape) for s in slices}
    if len(keys) != 1:
        raise ValueError(
            f"slices to stack must share resolution and input_shape, got {sorted(keys, key=str)}"
        )
    r, shape = keys.pop()
    return Slice(
        origin=np.stack([np.asarray(s.origin) for s in slices]),
        basis=np.stack([np.asarray(s.basis) for s in slices]),
        u_min=np.stack([np.asarray(s.u_min) for s in slices]),
        u_max=np.stack([np.asarray(s.u_max) for s in slices]),
        resolution=r,
        input_shape=shape,
    )


# -- constructors ---------------------------------------------------------------------------


def _flatten_batch(x, name: str, input_shape=None) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise TypeError(f"{name} must be a real numeric array, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0 or 0 in x.shape[1:]:
        raise ValueError(
            f"{name} must be a non-empty batch [N, *input_shape] with N >= 1, got shape {x.shape}"
        )
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"{name} must have shape [N, *{tuple(input_shape)}], got {x.shape}")
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"{name} contains NaN or inf; slices need finite inputs")
    return flat


def _flatten_one(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise TypeError(f"{name} must be a real numeric array, got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{name} must be one input of shape input_shape (ndim >= 1), got a scalar")
    flat = x.reshape(-1).astype(np.float64)
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"{name} contains NaN or inf; slices need finite inputs")
    return flat


def _fix_signs(basis: np.ndarray) -> np.ndarray:
    """Flip each column so its largest-magnitude entry is positive (a deterministic sign)."""
    idx = np.argmax(np.abs(basis), axis=0)
    signs = np.sign(basis[idx, np.arange(basis.shape[1])])
    signs[signs == 0] = 1.0
    return basis * signs


def _grid_bounds(u: np.ndarray, padding: float) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = u.min(axis=0), u.max(axis=0)
    pad = padding * (hi - lo)
    return lo - pad, hi + pad


def _make(origin, basis, lo, hi, resolution, input_shape) -> Slice:
    q, _ = np.linalg.qr(basis)  # exact float64 orthonormalisation before the float32 cast
    q = q * np.sign(np.sum(q * basis, axis=0))  # keep the given directions
    return Slice(
        origin=np.asarray(origin, np.float32),
        basis=np.asarray(q, np.float32),
        u_min=np.asarray(lo, np.float32),
        u_max=np.asarray(hi, np.float32),
        resolution=resolution,
        input_shape=tuple(input_shape),
    )


def pca_slice(x, *, resolution: int, padding: float = 0.1) -> Slice:
    """The plane through the data mean spanned by the top two principal components of ``x``.

    ``mu = mean(x)``, ``P = [v1, v2]`` the leading eigenvectors of the covariance
    ``(x - mu)^T (x - mu) / N`` (computed in float64, each sign fixed so its largest-magnitude
    entry is positive), and the R x R grid spans ``[min_n u_n - pad, max_n u_n + pad]`` on each
    axis, ``u_n = P^T (x_n - mu)``, ``pad = padding * (max - min)``. ``x`` is used exactly as the
    model sees it: no second standardisation (boundary-aware quantization paper, PCA slice).

    Args:
        x: inputs ``[N, *input_shape]`` (flattened internally; images stay NHWC for the model).
        resolution: grid points per axis R >= 2.
        padding: fraction of the projected data range added on each side (>= 0).

    Returns:
        A :class:`Slice` with ``input_shape = x.shape[1:]``.

    Raises:
        ValueError: resolution < 2, negative padding, NaN/inf in ``x``, or data whose centred
            rank is below 2 (second principal standard deviation <= ``PCA_RANK_RTOL`` times the
            first), e.g. constant data or fewer than 3 distinct points.

    Example:
        >>> slc = pca_slice(np.random.default_rng(0).normal(size=(100, 8)), resolution=64)
        >>> slc.points().shape
        (4096, 8)
    """
    resolution = check_int("resolution", resolution, 2)
    padding = _check_padding(padding)
    flat = _flatten_batch(x, "x")
    n, d = flat.shape
    if d < 2:
        raise ValueError(f"pca_slice needs inputs of dimension D >= 2, got D = {d}")
    mu = flat.mean(axis=0)
    xc = flat - mu
    if n <= d:  # eigen-decompose the N x N Gram matrix instead of the D x D covariance
        evals, evecs = np.linalg.eigh(xc @ xc.T)
        order = np.argsort(evals)[::-1][:2]
        lam = np.maximum(evals[order], 0.0)
        basis = xc.T @ evecs[:, order]
        norms = np.linalg.norm(basis, axis=0)
        basis = basis / np.where(norms > 0, norms, 1.0)
    else:
        evals, evecs = np.linalg.eigh(xc.T @ xc)
        order = np.argsort(evals)[::-1][:2]
        lam = np.maximum(evals[order], 0.0)
        basis = evecs[:, order]
    sd = np.sqrt(lam / n)
    if not sd[0] > 0 or sd[1] <= PCA_RANK_RTOL * sd[0]:
        raise ValueError(
            "pca_slice needs data of (centred) rank >= 2, got principal standard deviations "
            f"{sd[0]:.3g}, {sd[1]:.3g} (constant data, collinear points or N < 3?)"
        )
    basis = _fix_signs(basis)
    lo, hi = _grid_bounds(xc @ basis, padding)
    return _make(mu, basis, lo, hi, resolution, np.shape(x)[1:])


def random_slice(
    key: jax.Array,
    x,
    *,
    resolution: int,
    scale: float | None = None,
    padding: float = 0.1,
) -> Slice:
    """A plane through the mean of ``x`` spanned by a uniformly random orthonormal pair.

    ``P = Q`` from the QR decomposition of ``G ~ N(0, I)[D, 2]`` drawn with ``key`` (signs fixed
    so ``diag(R) > 0``, which makes ``P`` Haar-distributed), ``mu = mean(x)``. The grid spans
    ``[-scale, scale]^2`` when ``scale`` is given, else the projected range of ``x`` plus
    ``padding`` as in :func:`pca_slice`. For a plane through one chosen input pass it as a batch
    of one, ``x0[None]``, with a ``scale``.

    Args:
        key: PRNG key.
        x: inputs ``[N, *input_shape]``; their mean is the origin.
        resolution: grid points per axis R >= 2.
        scale: half-width of the grid in slice coordinates (input-space Euclidean units), > 0.
        padding: fraction of the projected data range added on each side when ``scale`` is None.

    Returns:
        A :class:`Slice`.

    Example:
        >>> slc = random_slice(jax.random.key(0), np.zeros((1, 28, 28, 1)), resolution=32,
        ...                    scale=3.0)
        >>> slc.extent.tolist()
        [-3.0, 3.0, -3.0, 3.0]
    """
    resolution = check_int("resolution", resolution, 2)
    padding = _check_padding(padding)
    flat = _flatten_batch(x, "x")
    d = flat.shape[1]
    if d < 2:
        raise ValueError(f"random_slice needs inputs of dimension D >= 2, got D = {d}")
    g = np.asarray(jax.random.normal(key, (d, 2), jnp.float32), np.float64)
    q, r = np.linalg.qr(g)
    basis = q * np.sign(np.diag(r))
    mu = flat.mean(axis=0)
    if scale is not None:
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite float > 0, got {scale}")
        lo, hi = np.full(2, -scale), np.full(2, scale)
    else:
        lo, hi = _grid_bounds((flat - mu) @ basis, padding)
        if np.any(hi <= lo):
            raise ValueError(
                "random_slice: the data has no extent along the random plane (one point or "
                "constant data); pass scale= to set the grid half-width"
            )
    return _make(mu, basis, lo, hi, resolution, np.shape(x)[1:])


def points_slice(
    x0,
    x1,
    x2=None,
    *,
    resolution: int,
    padding: float = 0.1,
    key: jax.Array | None = None,
) -> Slice:
    """The plane through two or three chosen inputs, with ``x0`` at ``u = (0, 0)``.

    ``e1 = (x1 - x0) / |x1 - x0|``; ``e2`` = the Gram-Schmidt remainder of ``x2 - x0`` against
    ``e1`` (normalised), or, with two points, a uniformly random unit vector orthogonal to
    ``e1`` drawn with ``key``. The grid spans the bounding box of the chosen points' slice
    coordinates plus ``padding`` times its width on each side; with two points the second axis
    spans ``[-w/2, w/2]`` (``w`` the first axis' span) so the grid is square.

    Args:
        x0, x1, x2: single inputs of one shape ``input_shape`` (no batch axis).
        resolution: grid points per axis R >= 2.
        padding: fraction of the span added on each side (>= 0).
        key: PRNG key for the second direction; required when ``x2`` is None.

    Returns:
        A :class:`Slice` with ``input_shape = x0.shape``.

    Raises:
        ValueError: coincident or collinear points, shape mismatch, NaN/inf, missing ``key``.

    Example:
        >>> slc = points_slice(np.zeros(4), np.eye(4)[0], np.eye(4)[1], resolution=8)
        >>> np.array_equal(slc.basis, np.eye(4, 2))  # e1 = x1 - x0, e2 = x2 - x0
        True
    """
    resolution = check_int("resolution", resolution, 2)
    padding = _check_padding(padding)
    shape = np.shape(x0)
    pts = [x0, x1] + ([] if x2 is None else [x2])
    for i, p in enumerate(pts):
        if np.shape(p) != shape:
            raise ValueError(f"x{i} must have the shape of x0 {shape}, got {np.shape(p)}")
    flat = [_flatten_one(p, f"x{i}") for i, p in enumerate(pts)]
    a = flat[1] - flat[0]
    na = np.linalg.norm(a)
    if na == 0:
        raise ValueError("points_slice needs x1 != x0 (coincident points span no plane)")
    e1 = a / na
    if x2 is None:
        if key is None:
            raise ValueError("points_slice with two points needs key= for the second direction")
        g = np.asarray(jax.random.normal(key, (e1.size,), jnp.float32), np.float64)
        e2 = g - (g @ e1) * e1
        if e1.size < 2 or np.linalg.norm(e2) == 0:
            raise ValueError("points_slice: inputs need dimension D >= 2")
        e2 = e2 / np.linalg.norm(e2)
    else:
        b = flat[2] - flat[0]
        e2 = b - (b @ e1) * e1
        nb = np.linalg.norm(e2)
        if nb <= PCA_RANK_RTOL * max(na, np.linalg.norm(b)):
            raise ValueError("points_slice needs three non-collinear points (x2 lies on x0-x1)")
        e2 = e2 / nb
    basis = np.stack([e1, e2], axis=1)
    u = (np.stack(flat) - flat[0]) @ basis
    lo, hi = u.min(axis=0), u.max(axis=0)
    if x2 is None:
        lo[1], hi[1] = -0.5 * (hi[0] - lo[0]), 0.5 * (hi[0] - lo[0])
    pad = padding * (hi - lo)
    return _make(flat[0], basis, lo - pad, hi + pad, resolution, shape)
