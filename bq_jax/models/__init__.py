"""Flax linen classifiers exposing ``apply_fn(variables, x) -> logits``.

``make_model(name, *, num_classes, input_shape, **hyper)`` builds a :class:`Model` (names
``mlp``, ``cnn``, ``resnet``). A model is pure functions of a flax variables dict
``{"params": ..., "batch_stats": ...}`` (``batch_stats`` only for ``resnet``): ``init(key)``,
``apply_fn(variables, x)`` (eval mode) and ``apply_train(variables, x, *, key)`` (training mode).

Weight leaves are ``kernel`` (Dense ``(in, out)``, Conv ``HWIO``: the output channel is the
last axis) and ``bias``; batch norm has ``scale``/``bias`` and ``batch_stats`` ``mean``/``var``.
Paths follow linen's automatic names, e.g. ``params/Dense_0/kernel``,
``params/ResidualBlock_1/Conv_0/kernel`` (see :mod:`bq_jax.models.architectures`).

Models written elsewhere (flax linen or NNX, equinox, a plain function) come in through
:func:`adapt` (:mod:`bq_jax.models.adapt`), which also lists their weight layers and the layout
of each kernel; :mod:`bq_jax.models.tracing` finds those layers in the jaxpr of any
``apply_fn``.
"""

from bq_jax.models.adapt import ADAPTERS, Adapted, Adapter, adapt, register_adapter
from bq_jax.models.architectures import (
    CNN,
    MLP,
    CNNConfig,
    MLPConfig,
    ResidualBlock,
    ResNet,
    ResNetConfig,
)
from bq_jax.models.model import MODEL_NAMES, Model, make_model, model_from_dict

__all__ = [
    "ADAPTERS",
    "Adapted",
    "Adapter",
    "CNN",
    "MLP",
    "MODEL_NAMES",
    "CNNConfig",
    "MLPConfig",
    "Model",
    "ResNet",
    "ResNetConfig",
    "ResidualBlock",
    "adapt",
    "make_model",
    "model_from_dict",
    "register_adapter",
]
