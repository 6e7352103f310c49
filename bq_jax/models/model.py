"""``Model``: a classifier as pure functions of a flax variables dict, and ``make_model``."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bq_jax._src.checks import check_int, is_int
from bq_jax.models.architectures import CNN, MLP, CNNConfig, MLPConfig, ResNet, ResNetConfig

__all__ = ["MODEL_NAMES", "Model", "make_model", "model_from_dict"]

# name -> (linen module class, config class, required input rank or None for any rank)
_REGISTRY: dict[str, tuple[type[nn.Module], type, int | None]] = {
    "mlp": (MLP, MLPConfig, None),
    "cnn": (CNN, CNNConfig, 3),
    "resnet": (ResNet, ResNetConfig, 3),
}
#: Names accepted by :func:`make_model`.
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _jsonable(v):
    if isinstance(v, tuple | list):
        return [_jsonable(e) for e in v]
    return v


@dataclasses.dataclass(frozen=True, kw_only=True)
class Model:
    """A classifier: its architecture, hyperparameters and pure functions of its variables.

    Built by :func:`make_model`. Frozen and hashable (equality compares ``name``, ``config``,
    ``num_classes`` and ``input_shape``), so ``model.apply_fn`` can be a static argument or
    closed over in ``jax.jit``.

    * ``init(key) -> variables``: ``{"params": ...}``, plus ``{"batch_stats": ...}`` for models
      with batch norm (``resnet``).
    * ``apply_fn(variables, x) -> logits``: eval mode (batch norm uses the running statistics,
      no dropout); pure and jit-able. PTQ finds its layers in its jaxpr
      (:mod:`bq_jax.models.tracing`), jitted or not.
    * ``apply_train(variables, x, *, key=None) -> (logits, updates)``: training mode (batch
      statistics, dropout); ``updates`` is ``{"batch_stats": new_running_stats}`` for models
      with batch norm and ``{}`` otherwise, i.e. the collections to merge into ``variables``.

    Example:
        >>> model = make_model("mlp", num_classes=10, input_shape=(64,))
        >>> variables = model.init(jax.random.key(0))
        >>> model.apply_fn(variables, jnp.zeros((5, 64))).shape
        (5, 10)
    """

    # Architecture name, one of MODEL_NAMES.
    name: str
    # Hyperparameters (MLPConfig, CNNConfig or ResNetConfig); JSON form in to_dict().
    config: Any
    # Number of classes K (logits have K entries).
    num_classes: int
    # Shape of one input example, e.g. (64,) or (28, 28, 1) (images are HWC).
    input_shape: tuple[int, ...]
    # The flax linen module built from the fields above.
    module: nn.Module = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.name not in _REGISTRY:
            raise ValueError(
                f"unknown model name {self.name!r}; known names: {', '.join(MODEL_NAMES)}"
            )
        module_cls, config_cls, rank = _REGISTRY[self.name]
        if not isinstance(self.config, config_cls):
            raise TypeError(
                f"config of model {self.name!r} must be a {config_cls.__name__}, got "
                f"{type(self.config).__name__}"
            )
        num_classes = check_int("num_classes", self.num_classes, 2)
        shape = self.input_shape
        if (
            not isinstance(shape, Sequence)
            or not shape
            or not all(is_int(d) for d in shape)
            or any(d < 1 for d in shape)
        ):
            raise ValueError(
                f"input_shape must be a non-empty tuple of ints >= 1 (one example's shape), "
                f"got {shape!r}"
            )
        shape = tuple(int(d) for d in shape)
        if rank is not None and len(shape) != rank:
            raise ValueError(
                f"model {self.name!r} needs images: input_shape must be (height, width, "
                f"channels), got {shape}"
            )
        object.__setattr__(self, "num_classes", num_classes)
        object.__setattr__(self, "input_shape", shape)
        module = module_cls(num_classes=self.num_classes, **dataclasses.asdict(self.config))
        object.__setattr__(self, "module", module)

    # ------------------------------------------------------------------------------ info
    @property
    def has_batch_norm(self) -> bool:
        """True when the variables carry a ``batch_stats`` collection."""
        return self.name == "resnet"

    @property
    def uses_dropout(self) -> bool:
        """True when ``apply_train`` needs a key (dropout rate > 0)."""
        return getattr(self.config, "dropout", 0.0) > 0.0

    def to_dict(self) -> dict:
        """JSON-serialisable description: ``{"name", "num_classes", "input_shape", "config"}``.

        ``model_from_dict(model.to_dict()) == model``. Checkpoints store it and compare it.
        """
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "config": {k: _jsonable(v) for k, v in dataclasses.asdict(self.config).items()},
        }

    # ------------------------------------------------------------------------------ functions
    def _check_input(self, x) -> tuple[jax.Array, bool]:
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            x = jnp.asarray(x)
        if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
            raise TypeError(f"x must be a real numeric array, got dtype {x.dtype}")
        shape = tuple(x.shape)
        k = len(self.input_shape)
        if shape == self.input_shape:
            single = True
            x = jnp.reshape(x, (1, *shape))
        elif len(shape) == k + 1 and shape[1:] == self.input_shape:
            single = False
        else:
            raise ValueError(
                f"model {self.name!r} takes x of shape (N, {', '.join(map(str, self.input_shape))})"
                f" or one example {self.input_shape}; got x.shape = {shape}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.float32)
        return x, single

    @staticmethod
    def _check_variables(variables) -> None:
        if not isinstance(variables, Mapping) or "params" not in variables:
            raise TypeError(
                "variables must be a flax variables dict with a 'params' entry "
                f"(what Model.init returns), got {type(variables).__name__}"
            )

    def init(self, key: jax.Array) -> dict:
        """Fresh variables: ``{"params": ...}`` (+ ``{"batch_stats": ...}`` with batch norm).

        Kernels: LeCun normal, ``w = std * t`` with ``t`` a standard normal truncated to
        [-2, 2] and ``std = 1 / (0.8796 * sqrt(fan_in))`` so that ``Var(w) = 1 / fan_in``
        (flax's default; LeCun et al. 1998), ``fan_in`` = product of all but the last kernel
        axis. All kernels come from one draw ``truncated_normal(key, [total])`` split in
        sorted path order (one random draw compiles far faster on CPU than one per layer).
        Biases and batch-norm shifts 0, batch-norm scales 1, running mean 0 and variance 1.

        Args:
            key: a ``jax.random`` key (initialisation is a pure function of it).

        Returns:
            A plain nested dict of float32 arrays; paths are documented on the modules in
            :mod:`bq_jax.models.architectures`.
        """
        if not hasattr(key, "dtype") or not (
            jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or tuple(key.shape) == (2,)
        ):
            raise TypeError(
                "key must be a jax.random key (jax.random.key(seed) or jax.random.PRNGKey(seed)),"
                f" got {type(key).__name__} {getattr(key, 'shape', '')}"
            )
        return flax.core.unfreeze(_jitted_init(self)(key))

    def apply_fn(self, variables, x) -> jax.Array:
        """Logits of the eval-mode model: ``float32[N, num_classes]`` for ``x[N, *input_shape]``
        (or ``[num_classes]`` for one example ``x[*input_shape]``).

        Batch norm uses the running statistics; dropout is off. Pure and jit-able.

        Args:
            variables: flax variables dict (``init``'s structure; extra collections are
                passed through to the module).
            x: inputs as the model sees them (standardised; images NHWC).

        Returns:
            Logits.

        Raises:
            ValueError: ``x`` does not end in ``input_shape``.
        """
        self._check_variables(variables)
        x, single = self._check_input(x)
        logits = self.module.apply(variables, x, train=False)
        return logits[0] if single else logits

    def apply_train(self, variables, x, *, key: jax.Array | None = None):
        """Training-mode forward pass: ``(logits, updates)``.

        Batch norm normalises with the batch statistics and updates the running ones
        (``new = momentum * old + (1 - momentum) * batch``); dropout is on.

        Args:
            variables: flax variables dict.
            x: a batch ``x[N, *input_shape]``.
            key: dropout key; required when the model uses dropout, ignored otherwise.

        Returns:
            ``(logits[N, K], updates)`` with ``updates = {"batch_stats": ...}`` for models with
            batch norm and ``{}`` otherwise (merge it into ``variables``).
        """
        self._check_variables(variables)
        x, single = self._check_input(x)
        if single:
            raise ValueError(
                f"apply_train needs a batch x[N, {', '.join(map(str, self.input_shape))}], "
                f"got one example of shape {self.input_shape}"
            )
        rngs = {}
        if self.uses_dropout:
            if key is None:
                raise ValueError(
                    f"model {self.name!r} uses dropout ({self.config.dropout}); apply_train "
                    "needs key="
                )
            rngs["dropout"] = key
        if self.has_batch_norm:
            logits, mutated = self.module.apply(
                variables, x, train=True, mutable=["batch_stats"], rngs=rngs
            )
            return logits, {"batch_stats": dict(mutated["batch_stats"])}
        return self.module.apply(variables, x, train=True, rngs=rngs), {}


# 1 / std of a standard normal truncated to [-2, 2] (flax / jax variance_scaling constant).
_TRUNCATED_NORMAL_STD = 0.87962566103423978


def _lecun_kernels(key, params):
    """Replaces every ``kernel`` leaf of ``params`` with LeCun-normal values drawn at once."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    is_kernel = [getattr(path[-1], "key", None) == "kernel" for path, _ in leaves]
    total = sum(
        int(np.prod(leaf.shape)) for (_, leaf), k in zip(leaves, is_kernel, strict=True) if k
    )
    z = jax.random.truncated_normal(key, -2.0, 2.0, (total,), jnp.float32)
    out, offset = [], 0
    for (_, leaf), k in zip(leaves, is_kernel, strict=True):
        if not k:
            out.append(leaf)
            continue
        size, fan_in = int(np.prod(leaf.shape)), int(np.prod(leaf.shape[:-1]))
        std = 1.0 / np.sqrt(fan_in) / _TRUNCATED_NORMAL_STD
        out.append(jnp.reshape(z[offset : offset + size], leaf.shape) * jnp.float32(std))
        offset += size
    return jax.tree_util.tree_unflatten(treedef, out)


@functools.lru_cache(maxsize=32)
def _jitted_init(model: Model):
    """``jax.jit`` of :meth:`Model.init`'s computation, compiled once per model and key type.

    The module's own initialisers give the structure, the biases and the batch-norm values;
    their kernel draws are unused (XLA drops them) and replaced by one draw for all kernels,
    because compiling one threefry draw per layer dominates ``init`` on CPU.
    """
    shape = (1, *model.input_shape)

    def init(key):
        variables = model.module.init(key, jnp.zeros(shape, jnp.float32), train=False)
        variables = dict(variables)
        variables["params"] = _lecun_kernels(key, variables["params"])
        return variables

    return jax.jit(init)


def make_model(name: str, *, num_classes: int, input_shape: Sequence[int], **hyper) -> Model:
    """Builds a classifier by name.

    Names and hyperparameters (defaults in brackets):

    * ``mlp``: ``width`` [64], ``depth`` [2] hidden Dense + ReLU layers, ``dropout`` [0].
      Any input shape (flattened). 8,970 parameters on digits (64 -> 64 -> 64 -> 10).
    * ``cnn``: ``features`` [(16, 32)] Conv + ReLU + 2x2 max-pool stages, ``kernel_size``
      [3], ``dense`` [64] hidden units, ``dropout`` [0]. Images (H, W, C); 105,866 parameters on
      28x28x1.
    * ``resnet``: ``stage_features`` [(16, 32, 64)], ``blocks_per_stage`` [1] basic blocks
      (a ResNet-8), ``bn_momentum`` [0.9], ``bn_epsilon`` [1e-5]. Images (H, W, C); 78,042
      parameters on 32x32x3; conv -> batch norm order, foldable.

    Args:
        name: one of :data:`MODEL_NAMES`.
        num_classes: number of classes K (>= 2).
        input_shape: shape of one example, e.g. ``(64,)`` or ``(28, 28, 1)``.
        **hyper: hyperparameters of the architecture (see above).

    Returns:
        A :class:`Model`.

    Raises:
        ValueError: unknown name (the message lists the known names), unknown or invalid
            hyperparameter, or an input shape the architecture cannot take.

    Example:
        >>> model = make_model("cnn", num_classes=10, input_shape=(28, 28, 1))
        >>> sorted(model.init(jax.random.key(0))["params"])
        ['Conv_0', 'Conv_1', 'Dense_0', 'Dense_1']
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; known names: {', '.join(MODEL_NAMES)}")
    config_cls = _REGISTRY[name][1]
    fields = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(hyper) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for model {name!r}; accepted: "
            f"{', '.join(fields)}"
        )
    return Model(
        name=name,
        config=config_cls(**hyper),
        num_classes=num_classes,
        input_shape=tuple(input_shape) if isinstance(input_shape, Sequence) else input_shape,
    )


def model_from_dict(d: Mapping) -> Model:
    """Rebuilds a :class:`Model` from :meth:`Model.to_dict` (e.g. read from a checkpoint).

    Example:
        >>> m = make_model("mlp", num_classes=10, input_shape=(64,), width=32)
        >>> model_from_dict(m.to_dict()) == m
        True
    """
    if not isinstance(d, Mapping) or not {"name", "num_classes", "input_shape", "config"} <= set(d):
        raise ValueError(
            "a model description needs the keys name, num_classes, input_shape, config "
            f"(Model.to_dict()); got {d!r}"
        )
    hyper = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(d["config"]).items()}
    return make_model(
        d["name"], num_classes=d["num_classes"], input_shape=tuple(d["input_shape"]), **hyper
    )
