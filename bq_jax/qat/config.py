"""``QATConfig``: what quantization-aware training quantizes and how it trains."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from bq_jax import quant

__all__ = ["GRADIENT_AT", "OPTIMIZERS", "QATConfig", "SCALE_MODES", "SCHEDULES"]

SCALE_MODES = ("range", "learned")
GRADIENT_AT = ("quantized", "float")
OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")
SCHEDULES = ("constant", "cosine")
# Candidate leaves by default: every kernel of the "params" collection (ptq.DEFAULT_TARGETS).
DEFAULT_TARGETS = r"^params/(.*/)?kernel$"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_pos(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v > 0


def check_study_settings(cfg, positive_ints: Sequence[str]) -> None:
    """Validates the settings the QAT studies share: ``bits`` (ints in [2, 16]), ``granularity``,
    ``seed`` (int >= 0), ``qat_learning_rate`` (> 0) and each of ``positive_ints`` (int >= 1).

    Raises:
      ValueError: naming the setting, what was given and what is accepted.
    """
    if not cfg.bits or not all(_is_int(b) and 2 <= b <= 16 for b in cfg.bits):
        raise ValueError(f"bits must be a non-empty tuple of ints in [2, 16], got {cfg.bits}")
    if cfg.granularity not in ("per_channel", "per_tensor"):
        raise ValueError(
            f"granularity must be 'per_channel' or 'per_tensor', got {cfg.granularity!r}"
        )
    for name in positive_ints:
        v = getattr(cfg, name)
        if not (_is_int(v) and v >= 1):
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not (_is_int(cfg.seed) and cfg.seed >= 0):
        raise ValueError(f"seed must be an int >= 0, got {cfg.seed!r}")
    lr = cfg.qat_learning_rate
    if isinstance(lr, bool) or not (isinstance(lr, float | int) and lr > 0):
        raise ValueError(f"qat_learning_rate must be > 0, got {lr!r}")


def _freeze_weights(weights):
    if isinstance(weights, quant.QuantConfig):
        return weights
    if isinstance(weights, str | bytes) or not isinstance(weights, Sequence) or not weights:
        raise ValueError(
            "weights must be a QuantConfig or a non-empty sequence of (regex, QuantConfig | None) "
            f"rules, got {weights!r}"
        )
    out = []
    for i, rule in enumerate(weights):
        if not (isinstance(rule, tuple | list) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ValueError(
                f"weights rule {i} must be a (regex, QuantConfig | None) pair, got {rule!r}"
            )
        if rule[1] is not None and not isinstance(rule[1], quant.QuantConfig):
            raise ValueError(
                f"weights rule {i} ({rule[0]!r}): the config must be a QuantConfig or None, "
                f"got {type(rule[1]).__name__}"
            )
        out.append((rule[0], rule[1]))
    return tuple(out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QATConfig:
    """Quantization-aware training settings (validated at construction; frozen, hashable).

    Example:
      >>> cfg = QATConfig(weights=QuantConfig(bits=3, granularity="per_channel"),
      ...                 scale_mode="learned", epochs=20, learning_rate=1e-3)
    """

    # Weight quantizer: one quant.QuantConfig for every targeted leaf, or ordered
    # (regex, QuantConfig | None) rules (first match wins; None keeps the leaf float), as in
    # ptq.quantize_weights. Integer (int2-int16) and floating-point formats (e4m3, e2m1, ...).
    weights: Any
    # Regex of candidate leaf paths ("params/Dense_0/kernel"); default every kernel.
    targets: str | None = DEFAULT_TARGETS
    # Activation quantization at the input of every Dense/Conv call: bits (2-16, asymmetric
    # per-tensor integer grid) or None (float activations).
    activation_bits: int | None = None
    # Range method of the activation ranges ("minmax", "percentile", "mse", "octav", "gaussian").
    activation_range_method: str = "minmax"
    # Momentum of the running activation range (range mode): lo <- m lo + (1 - m) lo_batch.
    activation_momentum: float = 0.9
    # "range": scales from the range method of each QuantConfig, re-estimated from the latent
    # weights every `range_update_every` steps. "learned": LSQ step sizes, initialised by the
    # range method and trained with gradient scale 1 / sqrt(N qmax).
    scale_mode: str = "range"
    # Range mode: re-estimate scales every this many steps (1: every step); 0 = fixed at init.
    range_update_every: int = 1
    # Learned mode guard: after every update each scale is clamped to at least
    # min_scale_ratio * (its initial value), so a scale can never reach zero or go negative.
    min_scale_ratio: float = 1e-3
    # "quantized": STE, loss and gradient at the quantized weights, update the latent float
    # weights. "float": ablation, gradient at the float (latent) weights themselves.
    gradient_at: str = "quantized"
    # Passes over the training set.
    epochs: int = 10
    # Examples per step (the last incomplete batch of an epoch is dropped).
    batch_size: int = 64
    # "adam", "adamw" (decoupled weight decay), "sgd" or "momentum" (SGD with momentum 0.9).
    optimizer: str = "adam"
    # Peak learning rate of the weights.
    learning_rate: float = 1e-3
    # Learning rate of the learned scales (None: learning_rate).
    scale_learning_rate: float | None = None
    # Learning-rate schedule over all steps: "constant" or "cosine" (decay to 0).
    schedule: str = "constant"
    # Decoupled weight decay (optimizer "adamw" only; 0 elsewhere).
    weight_decay: float = 0.0
    # Keep (step, latent params, scales) every this many steps in history["snapshots"]
    # (0: none). Step 0 and the final step are always included when > 0.
    snapshot_every: int = 0
    # Record held-out accuracy of the deployed model after every epoch in history.
    eval_heldout: bool = False
    # With checkpoint_dir: write a checkpoint every this many epochs (and at the end).
    checkpoint_every: int = 1

    def __post_init__(self):
        object.__setattr__(self, "weights", _freeze_weights(self.weights))
        if self.targets is not None and not isinstance(self.targets, str):
            raise ValueError(f"targets must be a regex string or None, got {self.targets!r}")
        ab = self.activation_bits
        if ab is not None and not (_is_int(ab) and 2 <= ab <= 16):
            raise ValueError(f"activation_bits must be None or an int in [2, 16], got {ab!r}")
        from bq_jax.quant import RANGE_METHODS

        if self.activation_range_method not in RANGE_METHODS:
            raise ValueError(
                f"activation_range_method must be one of {RANGE_METHODS}, "
                f"got {self.activation_range_method!r}"
            )
        m = self.activation_momentum
        if isinstance(m, bool) or not isinstance(m, int | float) or not 0.0 <= m < 1.0:
            raise ValueError(f"activation_momentum must be a float in [0, 1), got {m!r}")
        if self.scale_mode not in SCALE_MODES:
            raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {self.scale_mode!r}")
        if not (_is_int(self.range_update_every) and self.range_update_every >= 0):
            raise ValueError(
                "range_update_every must be an int >= 0 (0 = scales fixed at init), "
                f"got {self.range_update_every!r}"
            )
        r = self.min_scale_ratio
        if not (_is_pos(r) and r < 1.0):
            raise ValueError(f"min_scale_ratio must be a float in (0, 1), got {r!r}")
        if self.gradient_at not in GRADIENT_AT:
            raise ValueError(f"gradient_at must be one of {GRADIENT_AT}, got {self.gradient_at!r}")
        if self.gradient_at == "float" and self.scale_mode == "learned":
            raise ValueError(
                "gradient_at='float' evaluates the loss at the float weights, so learned scales "
                "would get no gradient; use scale_mode='range' with gradient_at='float'"
            )
        for name in ("epochs", "batch_size", "checkpoint_every"):
            v = getattr(self, name)
            if not (_is_int(v) and v >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not (_is_int(self.snapshot_every) and self.snapshot_every >= 0):
            raise ValueError(
                "snapshot_every must be an int >= 0 (0 = no snapshots), "
                f"got {self.snapshot_every!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not _is_pos(self.learning_rate):
            raise ValueError(f"learning_rate must be a float > 0, got {self.learning_rate!r}")
        slr = self.scale_learning_rate
        if slr is not None and not _is_pos(slr):
            raise ValueError(f"scale_learning_rate must be None or a float > 0, got {slr!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, int | float) or wd < 0:
            raise ValueError(f"weight_decay must be a float >= 0, got {wd!r}")
        if wd > 0 and self.optimizer != "adamw":
            raise ValueError(
                f"weight_decay={wd} needs optimizer='adamw' (decoupled decay), "
                f"got optimizer={self.optimizer!r}"
            )
        if not isinstance(self.eval_heldout, bool):
            raise ValueError(f"eval_heldout must be a bool, got {self.eval_heldout!r}")

    @property
    def learned(self) -> bool:
        """True for LSQ learned scales."""
        return self.scale_mode == "learned"

    def activation_config(self):
        """The activation ``QuantConfig`` (asymmetric per-tensor), or None."""
        if self.activation_bits is None:
            return None
        return quant.QuantConfig(
            bits=self.activation_bits,
            symmetric=False,
            range_method=self.activation_range_method,
        )
