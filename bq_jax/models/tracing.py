"""The weight layers of any JAX model, found in the jaxpr of ``apply_fn(params, x)``.

bq_jax only knows a model as ``apply_fn(params, x) -> logits``. Tracing it with
:func:`jax.make_jaxpr` gives its computation as a list of primitive equations, whatever wrote
it (flax linen, flax NNX, equinox -- whose per-example layers are ``vmap``-ed, so the jaxpr
holds their batched form -- or a plain function). A **weight layer** is a ``dot_general`` or
``conv_general_dilated`` equation whose weight operand is a leaf of ``params`` (possibly
through layout-only operations: ``convert_element_type``, ``reshape``, ``transpose``,
``broadcast_in_dim``, ``squeeze``, ``copy``) and whose other operand depends on ``x``. Its
**bias** is the ``add`` that follows it (through layout-only operations) with a leaf of the
same parent path, one value per output channel. Nested jaxprs (``jit``, ``closed_call``,
``checkpoint``, ``custom_jvp_call``, ``custom_vjp_call``) are inlined, so a pre-jitted
``apply_fn`` and activations with custom derivatives are seen through.

From the dimension numbers of the equation follows the **layout** of the kernel: which of its
axes is the output channel (:class:`Layer`): linen ``Dense`` ``(in, out)`` and ``Conv`` HWIO,
NNX ``Linear`` ``(in, out)``: ``-1``; equinox ``Linear`` ``(out, in)`` and ``Conv``
``(O, I, H, W)``: ``0``.

A layer is named by the path of its kernel's parent without the ``params`` collection
(``"params/Dense_0/kernel"`` -> ``"Dense_0"``, ``"params/layers/0/weight"`` -> ``"layers/0"``).

The same jaxpr is then *evaluated* (:meth:`Trace.run`) with hooks that record a layer's input
(the activation operand of its equation) and output (after its bias), or replace them (quantize
the input, skip a folded batch norm); :meth:`Trace.program` extracts one layer as a small pure
function of its input and its leaves (AdaRound re-runs it with a soft kernel). Calls of nested
jaxprs are inlined only where a hook needs it; elsewhere they are bound as they are, so custom
derivatives (``relu`` at 0, safe norms) are kept.

Limitations: the weight must be read from ``params`` (a kernel closed over by ``apply_fn`` is a
constant, not a layer); a layer's kernel has one output axis (``DenseGeneral`` with several
output axes is not a layer); loops (``scan``, ``while``) and branches are not entered.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

__all__ = [
    "AffineChain",
    "Layer",
    "LayerCall",
    "LayerProgram",
    "LayerSite",
    "Trace",
    "find_layers",
    "layer_outputs",
    "layer_structure",
    "leaf_paths",
    "rewrite_layers",
    "trace",
    "trace_layers",
]

# Calls whose body is inlined in the analysis (and, where a hook needs it, in evaluation).
_INLINE = frozenset(
    {
        "jit",
        "pjit",
        "closed_call",
        "core_call",
        "checkpoint",
        "remat",
        "custom_jvp_call",
        "custom_vjp_call",
        "custom_vjp_call_jaxpr",
    }
)
# Layout-only operations: a weight read through them is still the weight.
_LAYOUT = frozenset(
    {
        "_copy",
        "convert_element_type",
        "copy",
        "copy_p",
        "reduce_precision",
        "reshape",
        "transpose",
        "broadcast_in_dim",
        "squeeze",
        "expand_dims",
    }
)
# Layout-only operations allowed between a layer's equation and its bias add.
_BETWEEN = frozenset({"_copy", "convert_element_type", "copy", "reshape", "squeeze", "transpose"})
_AFFINE = frozenset({"add", "sub", "mul", "div"})
_MAIN = ("dot_general", "conv_general_dilated")
_COLLECTION = "params"


# ----------------------------------------------------------------------------- public records


@dataclasses.dataclass(frozen=True)
class Layer:
    """A weight layer of a model and the layout of its kernel.

    Attributes:
      name: the kernel's parent path without the ``params`` collection (``"Dense_0"``).
      kernel_path: ``/``-joined path of the kernel leaf (``"params/Dense_0/kernel"``).
      bias_path: path of the bias leaf, or ``None`` when the layer adds none.
      kind: ``"dense"`` (``dot_general``) or ``"conv"`` (``conv_general_dilated``).
      output_axis: the kernel axis of the output channel: ``-1`` when it is the last axis,
        else its index from the start (equinox ``Linear`` ``(out, in)``: ``0``).
      input_axis: the kernel axis of the input channel (same convention), or ``None`` when the
        layer contracts several kernel axes.
      feature_group_count: groups of a grouped convolution (1 for a dense layer).
    """

    name: str
    kernel_path: str
    bias_path: str | None
    kind: str
    output_axis: int
    input_axis: int | None = None
    feature_group_count: int = 1


@dataclasses.dataclass(frozen=True)
class LayerSite:
    """Where a :class:`Layer` sits in one :class:`Trace` (keys of its values in the jaxpr).

    Attributes:
      layer: the layer.
      operand: key of the activation operand of the layer's equation (the layer input).
      output: key of the layer output (after the bias add when there is one).
      channel_axis: axis of the output holding the output channels.
      num_channels: number of output channels.
      index: position of the layer's equation in the trace's (inlined) equation list.
      where: ``(scope, i)`` of the layer's equation; ``position``: which of its operands is
        the activation (0 or 1).
    """

    layer: Layer
    operand: Any
    output: Any
    channel_axis: int
    num_channels: int
    index: int
    where: tuple
    position: int

    @property
    def name(self) -> str:
        return self.layer.name


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """One recorded layer call: its input and output values in a run of ``apply_fn``.

    Attributes:
      name: layer name (``"Dense_0"``).
      layer: the :class:`Layer` (paths, kind, layout).
      inputs: the activation operand of the layer's ``dot_general`` / ``conv``.
      outputs: the layer output (bias included).
      channel_axis: the axis of ``outputs`` holding the output channels.
    """

    name: str
    layer: Layer
    inputs: Any
    outputs: Any
    channel_axis: int


@dataclasses.dataclass(frozen=True)
class AffineChain:
    """A per-channel affine map applied to a layer's output (an eval-mode batch norm).

    ``z = a * y + c`` computed by elementwise ``add`` / ``sub`` / ``mul`` / ``div`` steps whose
    other operands are computed from params leaves only (running mean and variance, scale,
    offset) and have one value per output channel.

    Attributes:
      steps: ``(op index, position of the running value)`` of each step, in order.
      output: key of the chain's result ``z``.
      leaves: paths of the params leaves the other operands are computed from.
    """

    steps: tuple[tuple[int, int], ...]
    output: Any
    leaves: tuple[str, ...]


class _Op(NamedTuple):
    prim: str
    eqn: Any  # JaxprEqn; None for the copies that connect an inlined body
    ins: tuple
    outs: tuple
    where: tuple = ()  # (scope, index of the equation in its jaxpr)


# ----------------------------------------------------------------------------- helpers


def leaf_paths(params) -> list[str]:
    """``/``-joined key paths of the leaves of ``params`` in ``jax.tree`` flattening order.

    Example:
      >>> leaf_paths({"params": {"Dense_0": {"kernel": 1.0, "bias": 0.0}}})
      ['params/Dense_0/bias', 'params/Dense_0/kernel']
    """

    def part(k) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    return [
        "/".join(part(k) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    ]


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _layer_name(kernel_path: str) -> str:
    parent = _parent(kernel_path) or kernel_path
    head, _, rest = parent.partition("/")
    return rest if head == _COLLECTION and rest else parent


def _public_axis(axis: int, ndim: int) -> int:
    return -1 if axis == ndim - 1 else axis


def _sub_jaxpr(eqn):
    for name in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(name)
        if isinstance(j, jcore.ClosedJaxpr):
            return j.jaxpr, j.consts
        if isinstance(j, jcore.Jaxpr):
            return j, ()
    return None


def _reshape_map(in_shape, out_shape) -> dict[int, int]:
    """Input axis -> output axis for the axes a row-major reshape keeps intact (size > 1)."""
    pre_in = np.cumprod((1, *in_shape))[:-1]
    pre_out = np.cumprod((1, *out_shape))[:-1]
    out = {}
    for i, (p, n) in enumerate(zip(pre_in, in_shape, strict=True)):
        if n == 1:
            continue
        for j, (q, m) in enumerate(zip(pre_out, out_shape, strict=True)):
            if q == p and m == n:
                out[i] = j
                break
    return out


def _forward_axis(op: _Op, in_shape, out_shape, axis: int) -> int | None:
    """Where input axis ``axis`` of a layout-only op ends up in its output (None: merged)."""
    p = op.prim
    if p in ("_copy", "convert_element_type", "copy", "copy_p", "reduce_precision"):
        return axis
    if p == "transpose":
        perm = tuple(op.eqn.params["permutation"])
        return perm.index(axis)
    if p == "broadcast_in_dim":
        return tuple(op.eqn.params["broadcast_dimensions"])[axis]
    if p == "squeeze":
        dims = tuple(d % len(in_shape) for d in op.eqn.params["dimensions"])
        if axis in dims:
            return None
        return axis - sum(1 for d in dims if d < axis)
    if p == "expand_dims":
        dims = sorted(d % len(out_shape) for d in op.eqn.params["dimensions"])
        j = axis
        for d in dims:
            if d <= j:
                j += 1
        return j
    if p == "reshape":
        if op.eqn.params.get("dimensions") is not None:
            return None
        return _reshape_map(in_shape, out_shape).get(axis)
    return None


def _shape_dtype(a) -> tuple[tuple[int, ...], Any]:
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        return tuple(a.shape), jnp.dtype(a.dtype)
    return tuple(jnp.shape(a)), jnp.result_type(a)


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(*_shape_dtype(a)), tree)


def _signature(params, x):
    leaves, treedef = jax.tree.flatten((params, x))
    return treedef, tuple(_shape_dtype(a) for a in leaves)


# ----------------------------------------------------------------------------- the trace


class Trace:
    """The inlined jaxpr of ``apply_fn(params, x)`` at one input shape, and its layers.

    Build it with :func:`trace`. Values of the jaxpr are named by keys ``(scope, var)`` where
    ``scope`` is the path of nested call equations (``()`` at the top).

    Attributes:
      closed: the ``ClosedJaxpr`` of ``apply_fn``.
      paths: path of each leaf of ``params`` (flattening order).
      sites: one :class:`LayerSite` per layer call, in call order.
    """

    def __init__(self, apply_fn: Callable, params, x):
        closed, out_shape = jax.make_jaxpr(apply_fn, return_shape=True)(
            _abstract(params), _abstract(x)
        )
        self.closed = closed
        self.out_tree = jax.tree.structure(out_shape)
        self.paths = leaf_paths(params)
        self.n_leaves = len(self.paths)
        self.ops: list[_Op] = []
        self.aval: dict = {}
        self.consts: dict = {}
        self.leaf_of: dict = {}
        self.x_keys: set = set()
        self._build(closed.jaxpr, closed.consts, None, ())
        self.producer = {k: i for i, op in enumerate(self.ops) for k in op.outs}
        self.consumers: dict = {}
        for i, op in enumerate(self.ops):
            for k in op.ins:
                if not isinstance(k, jcore.Literal):
                    self.consumers.setdefault(k, []).append(i)
        self._provenance()
        self.sites = tuple(self._find_sites())

    # -------------------------------------------------------------- building

    def _build(self, jaxpr, consts, in_refs, scope) -> None:
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            self.consts[(scope, v)] = c
            self.aval[(scope, v)] = v.aval
        for i, v in enumerate(jaxpr.invars):
            key = (scope, v)
            self.aval[key] = v.aval
            if in_refs is None:
                if i < self.n_leaves:
                    self.leaf_of[key] = i
                else:
                    self.x_keys.add(key)
            else:
                self.ops.append(_Op("_copy", None, (in_refs[i],), (key,)))
        for i, eqn in enumerate(jaxpr.eqns):
            ins = tuple(a if isinstance(a, jcore.Literal) else (scope, a) for a in eqn.invars)
            outs = tuple((scope, v) for v in eqn.outvars)
            for k, v in zip(outs, eqn.outvars, strict=True):
                self.aval[k] = v.aval
            sub = _sub_jaxpr(eqn) if eqn.primitive.name in _INLINE else None
            if sub is None:
                self.ops.append(_Op(eqn.primitive.name, eqn, ins, outs, (scope, i)))
                continue
            inner, inner_consts = sub
            sub_scope = (*scope, i)
            self._build(inner, inner_consts, ins, sub_scope)
            for k, v in zip(outs, inner.outvars, strict=True):
                ref = v if isinstance(v, jcore.Literal) else (sub_scope, v)
                self.ops.append(_Op("_copy", None, (ref,), (k,)))

    def _provenance(self) -> None:
        """``prov[key] = (leaf, axes)``: key is leaf ``leaf`` read through layout-only ops,
        ``axes[j]`` the leaf axis of its axis ``j`` (None if none); ``dep``: keys that depend
        on ``x``."""
        self.prov: dict = {}
        self.dep: set = set(self.x_keys)
        for key, leaf in self.leaf_of.items():
            self.prov[key] = (leaf, tuple(range(len(self.aval[key].shape))))
        for op in self.ops:
            keys = [k for k in op.ins if not isinstance(k, jcore.Literal)]
            if any(k in self.dep for k in keys):
                self.dep.update(op.outs)
                continue
            if (
                op.prim not in _LAYOUT
                or not op.ins
                or isinstance(op.ins[0], jcore.Literal)
                or op.ins[0] not in self.prov
            ):
                continue
            leaf, axes = self.prov[op.ins[0]]
            in_shape = self.aval[op.ins[0]].shape
            out_shape = self.aval[op.outs[0]].shape
            new = [None] * len(out_shape)
            for a, leaf_axis in enumerate(axes):
                if leaf_axis is None or in_shape[a] == 1:
                    continue
                j = _forward_axis(op, in_shape, out_shape, a)
                if j is not None and out_shape[j] == in_shape[a]:
                    new[j] = leaf_axis
            self.prov[op.outs[0]] = (leaf, tuple(new))

    def _find_sites(self):
        for index, op in enumerate(self.ops):
            if op.prim not in _MAIN:
                continue
            site = self._site(index, op)
            if site is not None:
                yield site

    def _weight(self, key):
        """``(leaf, axes)`` if ``key`` is a floating params leaf read through layout ops."""
        if isinstance(key, jcore.Literal) or key not in self.prov or key in self.dep:
            return None
        leaf, axes = self.prov[key]
        if not jnp.issubdtype(self.aval[key].dtype, jnp.floating):
            return None
        return leaf, axes

    def _site(self, index: int, op: _Op) -> LayerSite | None:
        lhs, rhs = op.ins[:2]
        candidates = []
        if op.prim == "dot_general":
            (lc, rc), (lb, rb) = op.eqn.params["dimension_numbers"]
            for side, w, a, wc, wb, ac, ab in (
                (1, rhs, lhs, rc, rb, lc, lb),
                (0, lhs, rhs, lc, lb, rc, rb),
            ):
                found = self._weight(w)
                if found is None or isinstance(a, jcore.Literal) or a not in self.dep or wb:
                    continue
                ndim = len(self.aval[w].shape)
                free = [d for d in range(ndim) if d not in tuple(wc)]
                if len(free) != 1:
                    continue
                a_free = len(self.aval[a].shape) - len(tuple(ac)) - len(tuple(ab))
                out_ch = len(tuple(lb)) + (a_free if side == 1 else 0)
                in_w = tuple(wc)[0] if len(tuple(wc)) == 1 else None
                candidates.append((w, a, found, free[0], in_w, out_ch, 1, 1 - side))
        else:
            dn = op.eqn.params["dimension_numbers"]
            found = self._weight(rhs)
            if found is not None and not isinstance(lhs, jcore.Literal) and lhs in self.dep:
                groups = int(op.eqn.params["feature_group_count"])
                candidates.append(
                    (rhs, lhs, found, dn.rhs_spec[0], dn.rhs_spec[1], dn.out_spec[1], groups, 0)
                )
        if not candidates:
            return None
        w, a, (leaf, axes), w_out, w_in, out_ch, groups, position = candidates[0]
        out_leaf_axis = axes[w_out]
        if out_leaf_axis is None:
            return None
        in_leaf_axis = axes[w_in] if w_in is not None else None
        kernel_path = self.paths[leaf]
        leaf_ndim = len(self.aval[self._leaf_key(leaf)].shape)
        n_out = self.aval[op.outs[0]].shape[out_ch]
        output, channel_axis, bias_path = self._bias(op.outs[0], out_ch, n_out, kernel_path)
        layer = Layer(
            name=_layer_name(kernel_path),
            kernel_path=kernel_path,
            bias_path=bias_path,
            kind="dense" if op.prim == "dot_general" else "conv",
            output_axis=_public_axis(out_leaf_axis, leaf_ndim),
            input_axis=None if in_leaf_axis is None else _public_axis(in_leaf_axis, leaf_ndim),
            feature_group_count=groups,
        )
        return LayerSite(layer, a, output, channel_axis, n_out, index, op.where, position)

    def _leaf_key(self, leaf: int):
        for key, i in self.leaf_of.items():
            if i == leaf:
                return key
        raise KeyError(leaf)

    def _single_consumer(self, key):
        cons = self.consumers.get(key, [])
        return self.ops[cons[0]] if len(cons) == 1 else None

    def _bias(self, out_key, ch: int, n_out: int, kernel_path: str):
        """``(output key, channel axis, bias path)`` after the bias add, if any."""
        cur, axis = out_key, ch
        while True:
            nxt = self._single_consumer(cur)
            if nxt is None:
                break
            if nxt.prim in _BETWEEN and nxt.ins[0] == cur:
                j = _forward_axis(nxt, self.aval[cur].shape, self.aval[nxt.outs[0]].shape, axis)
                if j is None:
                    break
                cur, axis = nxt.outs[0], j
                continue
            if nxt.prim == "add" and cur in nxt.ins and nxt.ins[0] != nxt.ins[1]:
                other = nxt.ins[1] if nxt.ins[0] == cur else nxt.ins[0]
                found = self._weight(other)
                if found is not None:
                    leaf, axes = found
                    path = self.paths[leaf]
                    size = int(np.prod(self.aval[self._leaf_key(leaf)].shape))
                    if (
                        _parent(path) == _parent(kernel_path)
                        and path != kernel_path
                        and size == n_out
                        and axes[axis] is not None
                        and self.aval[other].shape[axis] == n_out
                    ):
                        return nxt.outs[0], axis, path
            break
        return out_key, ch, None

    # -------------------------------------------------------------- queries

    def layers(self, *, allow_repeated: bool = False) -> tuple[LayerSite, ...]:
        """The layer sites; a kernel used by more than one call raises unless allowed."""
        if not allow_repeated:
            seen = set()
            for s in self.sites:
                if s.layer.kernel_path in seen:
                    raise ValueError(
                        f"layer {s.name!r} ({s.layer.kernel_path}) is called more than once in "
                        "one forward pass (weight sharing); per-layer PTQ needs one call per layer"
                    )
                seen.add(s.layer.kernel_path)
        return self.sites

    def site(self, kernel_path: str) -> LayerSite:
        for s in self.sites:
            if s.layer.kernel_path == kernel_path:
                return s
        known = [s.layer.kernel_path for s in self.sites]
        raise KeyError(f"no layer with kernel {kernel_path!r}; layers: {known}")

    def affine_chain(self, site: LayerSite) -> AffineChain | None:
        """The longest per-channel affine chain after ``site``'s output, or None.

        The output must have a single reader at each step (a value also used elsewhere cannot
        be folded away), and each other operand must be computed from params leaves (not from
        ``x``) with one value per output channel (size 1 on every other axis).
        """
        cur, steps, others = site.output, [], []
        shape = self.aval[site.output].shape
        own = {site.layer.kernel_path, site.layer.bias_path}
        while True:
            cons = self.consumers.get(cur, [])
            if len(cons) != 1:
                break
            idx = cons[0]
            op = self.ops[idx]
            if op.prim == "_copy":
                steps.append((idx, 0))
                cur = op.outs[0]
                continue
            if op.prim not in _AFFINE or len(op.ins) != 2 or op.ins[0] == op.ins[1]:
                break
            pos = op.ins.index(cur)
            other = op.ins[1 - pos]
            if op.prim == "div" and pos == 1:
                break
            if not isinstance(other, jcore.Literal):
                if other in self.dep:
                    break
                oshape = self.aval[other].shape
                if oshape and (
                    len(oshape) != len(shape)
                    or any(n != 1 for a, n in enumerate(oshape) if a != site.channel_axis)
                ):
                    break
                others.append(other)
            if tuple(self.aval[op.outs[0]].shape) != tuple(shape):
                break
            steps.append((idx, pos))
            cur = op.outs[0]
        leaves = {self.paths[self.leaf_of[k]] for k in self.inputs_of(others) if k in self.leaf_of}
        if not leaves or leaves & own:
            return None
        # drop trailing copies: the chain ends at its last affine step
        while steps and self.ops[steps[-1][0]].prim == "_copy":
            steps.pop()
        return AffineChain(tuple(steps), self.ops[steps[-1][0]].outs[0], tuple(sorted(leaves)))

    def normalises_own_batch(self, site: LayerSite) -> bool:
        """True when the layer output is combined with statistics computed from itself (a
        training-mode batch norm: ``y - mean(y)``)."""
        derived = self.depends_on(site.output) - {site.output}
        for i in self.consumers.get(site.output, []):
            op = self.ops[i]
            ins = [k for k in op.ins if not isinstance(k, jcore.Literal) and k != site.output]
            if op.prim in _AFFINE and any(k in derived for k in ins):
                return True
        return False

    def affine_values(self, chain: AffineChain, params) -> list:
        """The other operand of each chain step (``None`` for copies), from ``params``."""
        keys = []
        for idx, pos in chain.steps:
            op = self.ops[idx]
            keys.append(None if op.prim == "_copy" else op.ins[1 - pos])
        real = [k for k in keys if k is not None and not isinstance(k, jcore.Literal)]
        env = self.leaf_env(params, self.inputs_of(real))
        self.eval_ops(self.slice_ops(real, env), env)
        out = []
        for k in keys:
            if k is None:
                out.append(None)
            elif isinstance(k, jcore.Literal):
                out.append(k.val)
            else:
                out.append(env[k])
        return out

    def apply_chain(self, chain: AffineChain, values: list, y):
        """``z`` of the chain for a given ``y`` (broadcasting like the model does)."""
        for (idx, pos), other in zip(chain.steps, values, strict=True):
            op = self.ops[idx]
            if op.prim == "_copy":
                continue
            vals = [y, other] if pos == 0 else [other, y]
            y = _bind(op.eqn, vals)[0]
        return y

    def depends_on(self, key) -> set:
        """Keys computed from ``key`` (``key`` included)."""
        out = {key}
        start = self.producer.get(key, -1) + 1
        for op in self.ops[start:]:
            if any(k in out for k in op.ins if not isinstance(k, jcore.Literal)):
                out.update(op.outs)
        return out

    def inputs_of(self, keys) -> set:
        """Top-level leaves and constants the values at ``keys`` are computed from."""
        todo = [k for k in keys if not isinstance(k, jcore.Literal)]
        seen, out = set(), set()
        while todo:
            k = todo.pop()
            if k in seen:
                continue
            seen.add(k)
            if k in self.producer:
                todo.extend(
                    a for a in self.ops[self.producer[k]].ins if not isinstance(a, jcore.Literal)
                )
            else:
                out.add(k)
        return out

    def slice_ops(self, outputs, given) -> list[int]:
        """Indices (in order) of the ops needed for ``outputs`` when ``given`` keys are known."""
        need, todo = set(), [k for k in outputs if not isinstance(k, jcore.Literal)]
        given = set(given)
        seen = set()
        while todo:
            k = todo.pop()
            if k in seen or k in given:
                continue
            seen.add(k)
            i = self.producer.get(k)
            if i is None:
                continue
            if i not in need:
                need.add(i)
                todo.extend(a for a in self.ops[i].ins if not isinstance(a, jcore.Literal))
        return sorted(need)

    def eval_ops(self, indices: Sequence[int], env: dict) -> dict:
        """Evaluates the ops at ``indices`` (inlined view) on ``env`` (key -> value), in place."""
        for i in indices:
            op = self.ops[i]
            vals = [a.val if isinstance(a, jcore.Literal) else env[a] for a in op.ins]
            if op.eqn is None:
                outs = vals
            else:
                outs = _bind(op.eqn, vals)
            for k, v in zip(op.outs, outs, strict=True):
                env[k] = v
        return env

    def leaf_env(self, params, keys) -> dict:
        """``{key: value}`` of the top-level leaves / constants among ``keys`` from ``params``."""
        leaves = jax.tree.leaves(params)
        env = {}
        for k in keys:
            if k in self.leaf_of:
                env[k] = leaves[self.leaf_of[k]]
            elif k in self.consts:
                env[k] = self.consts[k]
        return env

    def program(self, site: LayerSite) -> LayerProgram:
        """The layer at ``site`` as a :class:`LayerProgram` (input, leaves -> output)."""
        ops = self.slice_ops([site.output], [site.operand])
        reads = {a for i in ops for a in self.ops[i].ins if not isinstance(a, jcore.Literal)}
        produced = {k for i in ops for k in self.ops[i].outs}
        ins = {k for k in reads if k not in produced and k != site.operand}
        leaves = tuple(sorted(self.paths[self.leaf_of[k]] for k in ins if k in self.leaf_of))
        consts = [k for k in ins if k in self.consts]
        stray = [k for k in ins if k not in self.leaf_of and k not in self.consts]
        if stray:
            raise ValueError(
                f"layer {site.name!r} reads values other than its input and parameters; it "
                "cannot be re-run on its own"
            )
        slots: dict = {site.operand: 0}
        for p in leaves:
            slots[self._leaf_key(self.paths.index(p))] = len(slots)
        for k in consts:
            slots[k] = len(slots)
        steps = []
        for i in ops:
            op = self.ops[i]
            refs = []
            for a in op.ins:
                if isinstance(a, jcore.Literal):
                    refs.append(("lit", _hashable_literal(a)))
                else:
                    refs.append(("slot", slots[a]))
            for k in op.outs:
                slots[k] = len(slots)
            prim = None if op.eqn is None else op.eqn.primitive
            params = () if op.eqn is None else tuple(sorted(op.eqn.params.items()))
            steps.append((prim, params, tuple(refs), len(op.outs)))
        return LayerProgram(
            steps=tuple(steps),
            leaves=leaves,
            consts=tuple(_Const(self.consts[k]) for k in consts),
            output=slots[site.output],
        )

    # -------------------------------------------------------------- evaluation

    def run(
        self,
        params,
        x,
        *,
        hooks: Mapping | None = None,
        operand_hooks: Mapping | None = None,
        keep=(),
    ) -> tuple[Any, dict]:
        """Evaluates the jaxpr on ``(params, x)`` (same shapes as traced).

        Args:
          params, x: the arguments (concrete arrays or tracers).
          hooks: ``{key: fn(value, store) -> value}`` applied when the value at ``key`` is
            computed; every reader of ``key`` sees the new value (``store`` holds the values
            at ``keep`` computed so far).
          operand_hooks: ``{site.where: {position: fn(value) -> value}}``: what one equation
            reads as its operand ``position`` (other readers of that value are unaffected).
          keep: keys whose values are returned in ``store``.

        Returns:
          ``(output, store)``.
        """
        hooks = dict(hooks or {})
        operand_hooks = dict(operand_hooks or {})
        keep = set(keep) | set(hooks)
        scopes = [s for s, _ in keep] + [s for s, _ in operand_hooks]
        needed = {s[:n] for s in scopes for n in range(1, len(s) + 1)}
        store: dict = {}
        args = jax.tree.leaves((params, x))
        ctx = _Context(hooks, operand_hooks, keep, needed, store)
        outs = _run(self.closed.jaxpr, self.closed.consts, args, (), ctx)
        return jax.tree.unflatten(self.out_tree, outs), store


class _Context(NamedTuple):
    hooks: dict
    operand_hooks: dict
    keep: set
    needed: set
    store: dict


class _Const:
    """A constant in a :class:`LayerProgram`, compared by identity (arrays are not hashable)."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _Const) and other.value is self.value


def _hashable_literal(lit):
    val = lit.val
    if isinstance(val, np.ndarray | np.generic):
        return ("np", val.dtype.str, val.shape, val.tobytes())
    return ("py", type(val).__name__, val)


def _literal_value(ref):
    kind = ref[0]
    if kind == "np":
        _, dtype, shape, data = ref
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
    return ref[2]


def _bind(eqn_or_prim, vals, params=None):
    """Applies one primitive (``jax.core.eval_jaxpr``'s way, for jax 0.6 to 0.10)."""
    ctx = None
    if params is None:
        prim, params, ctx = eqn_or_prim.primitive, eqn_or_prim.params, eqn_or_prim.ctx
    else:
        prim = eqn_or_prim
    bind_params = prim.get_bind_params(params)
    subfuns = []
    if isinstance(bind_params, tuple):  # jax < 0.7: (subfuns, params)
        subfuns, bind_params = bind_params
    if ctx is not None and hasattr(ctx, "manager"):
        with ctx.manager:
            out = prim.bind(*subfuns, *vals, **bind_params)
    else:
        out = prim.bind(*subfuns, *vals, **bind_params)
    return out if prim.multiple_results else [out]


@dataclasses.dataclass(frozen=True)
class LayerProgram:
    """One layer re-runnable on its own: ``program(x, leaves) -> y``.

    ``x`` is the layer input (the activation operand of its equation), ``leaves`` maps each
    path in ``program.leaves`` (kernel, bias) to a value. Programs compare and hash by their
    equations, so two layers with the same computation share compiled functions.
    """

    steps: tuple
    leaves: tuple[str, ...]
    consts: tuple
    output: int

    def __call__(self, x, leaves: Mapping[str, Any]):
        env = [x, *(leaves[p] for p in self.leaves), *(c.value for c in self.consts)]
        for prim, params, refs, n_out in self.steps:
            vals = [env[r[1]] if r[0] == "slot" else _literal_value(r[1]) for r in refs]
            outs = vals if prim is None else _bind(prim, vals, dict(params))
            env.extend(outs[:n_out])
        return env[self.output]


def _run(jaxpr, consts, args, scope, ctx: _Context):
    env = {}

    def write(v, val):
        key = (scope, v)
        if key in ctx.hooks:
            val = ctx.hooks[key](val, ctx.store)
        if key in ctx.keep:
            ctx.store[key] = val
        env[v] = val

    def read(a):
        return a.val if isinstance(a, jcore.Literal) else env[a]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        write(v, c)
    for v, a in zip(jaxpr.invars, args, strict=True):
        write(v, a)
    for i, eqn in enumerate(jaxpr.eqns):
        sub_scope = (*scope, i)
        invals = [read(a) for a in eqn.invars]
        for pos, fn in ctx.operand_hooks.get((scope, i), {}).items():
            invals[pos] = fn(invals[pos])
        inline = sub_scope in ctx.needed and eqn.primitive.name in _INLINE
        sub = _sub_jaxpr(eqn) if inline else None
        if sub is not None:
            inner, inner_consts = sub
            outs = _run(inner, inner_consts, invals, sub_scope, ctx)
        else:
            outs = _bind(eqn, invals)
        for v, o in zip(eqn.outvars, outs, strict=True):
            write(v, o)
    return [read(v) for v in jaxpr.outvars]


# ----------------------------------------------------------------------------- entry points


@functools.lru_cache(maxsize=64)
def _cached_trace(apply_fn, treedef, avals) -> Trace:
    structs = [jax.ShapeDtypeStruct(s, d) for s, d in avals]
    params, x = jax.tree.unflatten(treedef, structs)
    return Trace(apply_fn, params, x)


def trace(apply_fn: Callable, params, x) -> Trace:
    """The :class:`Trace` of ``apply_fn(params, x)`` (cached per function and shapes).

    Nothing is computed: only shapes and dtypes of ``params`` and ``x`` are used.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jnp.ones((5, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> [s.name for s in trace(model.apply, variables, x).sites]
      ['layers_0', 'layers_2']
    """
    treedef, avals = _signature(params, x)
    try:
        t = _cached_trace(apply_fn, treedef, avals)
    except TypeError:  # unhashable apply_fn
        return Trace(apply_fn, params, x)
    if any(isinstance(c, jax.core.Tracer) for c in t.closed.consts):
        _cached_trace.cache_clear()  # closes over traced values: never reuse
        return Trace(apply_fn, params, x)
    return t


def _no_layers_error() -> ValueError:
    return ValueError(
        "apply_fn computes no weight layer: no dot_general / conv_general_dilated in its jaxpr "
        "takes a floating-point leaf of params as its weight and an input-dependent value as "
        "its other operand (weights must be read from params, not closed over)"
    )


def find_layers(apply_fn: Callable, params, x) -> tuple[Layer, ...]:
    """The weight layers of ``apply_fn`` in call order, each listed once (abstract trace).

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jnp.ones((5, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> layer = find_layers(model.apply, variables, x)[1]
      >>> layer.name, layer.kernel_path, layer.bias_path, layer.kind, layer.output_axis
      ('layers_2', 'params/layers_2/kernel', 'params/layers_2/bias', 'dense', -1)
    """
    sites = trace(apply_fn, params, x).sites
    if not sites:
        raise _no_layers_error()
    out, seen = [], set()
    for s in sites:
        if s.layer.kernel_path not in seen:
            seen.add(s.layer.kernel_path)
            out.append(s.layer)
    return tuple(out)


def trace_layers(
    apply_fn: Callable, params, x, *, allow_repeated: bool = False
) -> tuple[Any, list[LayerCall]]:
    """Runs ``apply_fn(params, x)`` and records every layer call's input and output.

    Works eagerly and under ``jax.jit`` / ``vmap`` / ``grad`` (the records then hold tracers,
    to be returned from the traced function).

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``.
      params: the parameters pytree (e.g. a flax variables dict).
      x: a batch of inputs.
      allow_repeated: allow a kernel used by several calls (weight sharing); when False a
        repeated kernel raises ``ValueError``.

    Returns:
      ``(logits, calls)`` with ``calls`` in call order.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> logits, calls = trace_layers(model.apply, variables, x)
      >>> [c.name for c in calls], calls[1].inputs.shape
      (['layers_0', 'layers_2'], (64, 8))
    """
    t = trace(apply_fn, params, x)
    sites = t.layers(allow_repeated=allow_repeated)
    if not sites:
        raise _no_layers_error()
    keep = [k for s in sites for k in (s.operand, s.output)]
    logits, store = t.run(params, x, keep=keep)
    calls = [
        LayerCall(s.name, s.layer, store[s.operand], store[s.output], s.channel_axis) for s in sites
    ]
    return logits, calls


def layer_structure(
    apply_fn: Callable, params, x, *, allow_repeated: bool = False
) -> list[LayerCall]:
    """The calls of :func:`trace_layers` with ``jax.ShapeDtypeStruct`` inputs / outputs.

    Nothing is compiled or run. Use it to find layers, their order and shapes cheaply.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> [c.outputs.shape for c in layer_structure(model.apply, variables, x)]
      [(64, 8), (64, 3)]
    """
    t = trace(apply_fn, params, x)
    sites = t.layers(allow_repeated=allow_repeated)
    if not sites:
        raise _no_layers_error()

    def struct(key):
        a = t.aval[key]
        return jax.ShapeDtypeStruct(a.shape, a.dtype)

    return [
        LayerCall(s.name, s.layer, struct(s.operand), struct(s.output), s.channel_axis)
        for s in sites
    ]


def layer_outputs(apply_fn: Callable, params, x, names: Sequence[str] | None = None) -> dict:
    """``{name: output}`` of the layers (bias included, before the activation), in call order.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jnp.ones((5, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> {k: v.shape for k, v in layer_outputs(model.apply, variables, x).items()}
      {'layers_0': (5, 8), 'layers_2': (5, 3)}
    """
    _, calls = trace_layers(apply_fn, params, x)
    out = {c.name: c.outputs for c in calls}
    if names is not None:
        missing = [n for n in names if n not in out]
        if missing:
            raise ValueError(f"layers {missing} not found; the model calls {list(out)}")
        out = {n: out[n] for n in names}
    return out


def rewrite_layers(
    apply_fn: Callable,
    *,
    inputs: Callable[[str, Any], Any] | None = None,
    outputs: Callable[[str, Any, int], Any] | None = None,
) -> Callable:
    """A new ``apply_fn`` whose layer inputs / outputs go through ``inputs`` / ``outputs``.

    ``inputs(name, a)`` replaces the activation operand ``a`` of layer ``name`` as that layer
    reads it (other readers of ``a``, e.g. a skip connection, keep the original);
    ``outputs(name, y, channel_axis)`` replaces its output (bias included) for every reader.
    Either may return its argument unchanged. The returned
    function traces ``apply_fn`` at the shapes it is called with, so it is pure when the
    rewrites are, and can be jitted, vmapped and differentiated.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> zero_last = rewrite_layers(
      ...     model.apply, outputs=lambda name, y, axis: 0 * y if name == "layers_2" else y)
      >>> float(jnp.max(jnp.abs(zero_last(variables, x))))
      0.0
    """

    def new_apply_fn(params, x):
        t = trace(apply_fn, params, x)
        sites = t.layers(allow_repeated=True)
        if not sites:
            raise _no_layers_error()
        hooks, operand_hooks = {}, {}
        for s in sites:
            if inputs is not None:
                operand_hooks[s.where] = {s.position: functools.partial(inputs, s.name)}
            if outputs is not None:
                hooks[s.output] = functools.partial(_call_hook, outputs, s.name, s.channel_axis)
        return t.run(params, x, hooks=hooks, operand_hooks=operand_hooks)[0]

    return new_apply_fn


def _call_hook(fn, name, axis, value, store):
    del store
    return fn(name, value, axis)
