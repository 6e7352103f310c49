"""The flax linen classifiers behind :func:`bq_jax.models.make_model` and their configs.

Every module takes ``x[N, *input_shape]`` and returns logits ``[N, num_classes]``; its
``__call__(x, *, train)`` switches batch norm (running vs batch statistics) and dropout.
Sub-modules are left to linen's automatic names (``Dense_0``, ``Conv_1``, ``BatchNorm_0``,
``ResidualBlock_2``), numbered in call order within their parent, so variable paths are
predictable and documented in each class. Dense kernels are ``(in, out)`` and Conv kernels
``HWIO``: the output channel is always the last axis.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from bq_jax._src.checks import check_float, check_int

__all__ = ["CNN", "MLP", "CNNConfig", "MLPConfig", "ResNet", "ResNetConfig", "ResidualBlock"]


def _set_int(config, name: str, low: int) -> None:
    """Checks field ``name`` of a frozen config and stores it as a Python int."""
    object.__setattr__(config, name, check_int(name, getattr(config, name), low))


def _set_features(config, name: str) -> None:
    """Checks a tuple-of-channels field (a list is accepted) and stores it as a tuple of ints."""
    value = getattr(config, name)
    if not isinstance(value, tuple | list) or not value:
        raise ValueError(f"{name} must be a non-empty tuple of ints >= 1, got {value!r}")
    object.__setattr__(config, name, tuple(check_int(f"{name}[i]", v, 1) for v in value))


def _set_rate(config, name: str) -> None:
    """Checks a rate field in [0, 1) and stores it as a Python float."""
    value = check_float(name, getattr(config, name), low=0.0, high=1.0, open_high=True)
    object.__setattr__(config, name, value)


# ---------------------------------------------------------------------------------- configs
@dataclasses.dataclass(frozen=True, kw_only=True)
class MLPConfig:
    """Hyperparameters of the ``mlp`` classifier (defaults: fast on the 8x8 digits).

    Example:
        >>> MLPConfig(width=128, depth=3).width
        128
    """

    # Units of every hidden Dense layer.
    width: int = 64
    # Number of hidden Dense + ReLU layers (0: a linear classifier).
    depth: int = 2
    # Dropout rate after each hidden ReLU in training mode (0: no dropout, no key needed).
    dropout: float = 0.0

    def __post_init__(self):
        _set_int(self, "width", 1)
        _set_int(self, "depth", 0)
        _set_rate(self, "dropout")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CNNConfig:
    """Hyperparameters of the ``cnn`` classifier (defaults: MNIST / Fashion-MNIST 28x28x1).

    Example:
        >>> CNNConfig().features
        (16, 32)
    """

    # Output channels of each Conv + ReLU + 2x2 max-pool stage.
    features: tuple[int, ...] = (16, 32)
    # Side of the square convolution kernels (SAME padding).
    kernel_size: int = 3
    # Units of the hidden Dense layer after flattening (0: flatten straight into the output).
    dense: int = 64
    # Dropout rate before the output layer in training mode (0: no dropout, no key needed).
    dropout: float = 0.0

    def __post_init__(self):
        _set_features(self, "features")
        _set_int(self, "kernel_size", 1)
        _set_int(self, "dense", 0)
        _set_rate(self, "dropout")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResNetConfig:
    """Hyperparameters of the ``resnet`` classifier (defaults: a ResNet-8 for 32x32x3 CIFAR-10).

    Example:
        >>> ResNetConfig().stage_features
        (16, 32, 64)
    """

    # Channels of each stage; every stage after the first halves the spatial size (stride 2).
    stage_features: tuple[int, ...] = (16, 32, 64)
    # Basic residual blocks per stage.
    blocks_per_stage: int = 1
    # Weight of the old running statistics in each batch-norm update (flax ``momentum``).
    bn_momentum: float = 0.9
    # Added to the variance in batch norm: ``(z - mean) / sqrt(var + bn_epsilon)``.
    bn_epsilon: float = 1e-5

    def __post_init__(self):
        _set_features(self, "stage_features")
        _set_int(self, "blocks_per_stage", 1)
        _set_rate(self, "bn_momentum")
        bn_epsilon = check_float("bn_epsilon", self.bn_epsilon, low=0.0, open_low=True)
        object.__setattr__(self, "bn_epsilon", bn_epsilon)


# ---------------------------------------------------------------------------------- modules
class MLP(nn.Module):
    """Flatten -> ``depth`` x (Dense + ReLU [+ dropout]) -> Dense.

    Variable paths: ``params/Dense_i/{kernel,bias}`` for ``i = 0 .. depth`` (``Dense_<depth>``
    is the output layer). No batch norm.
    """

    num_classes: int
    width: int = 64
    depth: int = 2
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = jnp.reshape(x, (x.shape[0], -1))
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
            if self.dropout > 0.0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
    """``len(features)`` x (Conv + ReLU + 2x2 max-pool) -> flatten -> [Dense + ReLU] -> Dense.

    Variable paths: ``params/Conv_i/{kernel,bias}`` (HWIO kernels) for each stage ``i``;
    ``params/Dense_0`` the hidden layer and ``params/Dense_1`` the output layer (only
    ``Dense_0``, the output, when ``dense == 0``). No batch norm.
    """

    num_classes: int
    features: tuple[int, ...] = (16, 32)
    kernel_size: int = 3
    dense: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        k = (self.kernel_size, self.kernel_size)
        for f in self.features:
            x = nn.relu(nn.Conv(f, k, padding="SAME")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = jnp.reshape(x, (x.shape[0], -1))
        if self.dense > 0:
            x = nn.relu(nn.Dense(self.dense)(x))
        if self.dropout > 0.0:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class ResidualBlock(nn.Module):
    """Basic residual block: ``relu(BN_1(Conv_1(relu(BN_0(Conv_0(x))))) + shortcut(x))``.

    ``shortcut(x) = BN_2(Conv_2(x))`` (1x1, stride ``strides``) when the stride or the channel
    count changes, else ``x``. Every Conv is followed directly by its BatchNorm (the Conv output
    is the BatchNorm input, nothing in between) and has no bias, so each
    ``(Conv_i, BatchNorm_i)`` pair folds into one biased conv
    (:func:`bq_jax.ptq.fold_batch_norm`).

    Variable paths inside the block: ``params/Conv_i/kernel`` (HWIO), ``params/BatchNorm_i/
    {scale,bias}``, ``batch_stats/BatchNorm_i/{mean,var}`` for ``i = 0, 1`` (and 2 with a
    projection shortcut).
    """

    features: int
    strides: int = 1
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        def bn(z):
            return nn.BatchNorm(momentum=self.bn_momentum, epsilon=self.bn_epsilon)(
                z, use_running_average=not train
            )

        s = (self.strides, self.strides)
        y = nn.Conv(self.features, (3, 3), strides=s, padding="SAME", use_bias=False)(x)
        y = nn.relu(bn(y))
        y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(y)
        y = bn(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), strides=s, use_bias=False)(x)
            x = bn(x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """Small CIFAR-style ResNet: stem -> residual stages -> global average pool -> Dense.

    Stem: ``Conv_0`` (3x3, ``stage_features[0]`` channels, no bias) -> ``BatchNorm_0`` -> ReLU.
    Stage ``s`` has ``blocks_per_stage`` :class:`ResidualBlock` modules, the first with stride
    2 for ``s > 0``; blocks are numbered across stages (``ResidualBlock_0``,
    ``ResidualBlock_1``, ...). Head: mean over H and W -> ``Dense_0`` (logits).

    Variable paths: ``params/Conv_0/kernel``, ``params/BatchNorm_0/{scale,bias}``,
    ``batch_stats/BatchNorm_0/{mean,var}``, ``params/ResidualBlock_j/Conv_i/kernel``,
    ``params/ResidualBlock_j/BatchNorm_i/{scale,bias}``,
    ``batch_stats/ResidualBlock_j/BatchNorm_i/{mean,var}``, ``params/Dense_0/{kernel,bias}``.
    Conv -> BatchNorm order everywhere (foldable pairs, see :class:`ResidualBlock`).
    """

    num_classes: int
    stage_features: tuple[int, ...] = (16, 32, 64)
    blocks_per_stage: int = 1
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.Conv(self.stage_features[0], (3, 3), padding="SAME", use_bias=False)(x)
        x = nn.BatchNorm(momentum=self.bn_momentum, epsilon=self.bn_epsilon)(
            x, use_running_average=not train
        )
        x = nn.relu(x)
        for s, f in enumerate(self.stage_features):
            for b in range(self.blocks_per_stage):
                strides = 2 if (s > 0 and b == 0) else 1
                x = ResidualBlock(
                    f, strides=strides, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)
