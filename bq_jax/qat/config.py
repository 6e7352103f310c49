"""``QATConfig``: what quantization-aware training quantizes and how it trains."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from bq_jax import quant
from bq_jax._src.checks import check_choice, check_float, check_int

__all__ = ["GRADIENT_AT", "OPTIMIZERS", "QATConfig", "SCALE_MODES", "SCHEDULES"]

SCALE_MODES = ("range", "learned")
GRADIENT_AT = ("quantized", "float")
OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")
SCHEDULES = ("constant", "cosine")
# Candidate leaves by default: every kernel of the "params" collection (ptq.DEFAULT_TARGETS).
DEFAULT_TARGETS = r"^params/(.*/)?kernel$"


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
      >>> cfg = QATConfig(weights=quant.QuantConfig(bits=3, granularity="per_channel"),
      ...                 scale_mode="learned", epochs=20, learning_rate=1e-3)
      >>> cfg.learned
      True
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
        # Checked numbers are stored back as Python ints / floats (NumPy scalars are accepted).
        fields = {}
        if self.activation_bits is not None:
            fields["activation_bits"] = check_int("activation_bits", self.activation_bits, 2, 16)
        check_choice("activation_range_method", self.activation_range_method, quant.RANGE_METHODS)
        fields["activation_momentum"] = check_float(
            "activation_momentum", self.activation_momentum, low=0.0, high=1.0, open_high=True
        )
        check_choice("scale_mode", self.scale_mode, SCALE_MODES)
        # 0: scales fixed at init.
        fields["range_update_every"] = check_int("range_update_every", self.range_update_every, 0)
        fields["min_scale_ratio"] = check_float(
            "min_scale_ratio",
            self.min_scale_ratio,
            low=0.0,
            high=1.0,
            open_low=True,
            open_high=True,
        )
        check_choice("gradient_at", self.gradient_at, GRADIENT_AT)
        if self.gradient_at == "float" and self.scale_mode == "learned":
            raise ValueError(
                "gradient_at='float' evaluates the loss at the float weights, so learned scales "
                "would get no gradient; use scale_mode='range' with gradient_at='float'"
            )
        for name in ("epochs", "batch_size", "checkpoint_every"):
            fields[name] = check_int(name, getattr(self, name), 1)
        # 0: no snapshots.
        fields["snapshot_every"] = check_int("snapshot_every", self.snapshot_every, 0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        fields["learning_rate"] = check_float(
            "learning_rate", self.learning_rate, low=0.0, open_low=True
        )
        if self.scale_learning_rate is not None:
            fields["scale_learning_rate"] = check_float(
                "scale_learning_rate", self.scale_learning_rate, low=0.0, open_low=True
            )
        check_choice("schedule", self.schedule, SCHEDULES)
        wd = fields["weight_decay"] = check_float("weight_decay", self.weight_decay, low=0.0)
        if wd > 0 and self.optimizer != "adamw":
            raise ValueError(
                f"weight_decay={wd} needs optimizer='adamw' (decoupled decay), "
                f"got optimizer={self.optimizer!r}"
            )
        if not isinstance(self.eval_heldout, bool):
            raise TypeError(f"eval_heldout must be a bool, got {self.eval_heldout!r}")
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        """JSON-serialisable dict of the fields (what QAT checkpoints store and compare).

        Example:
          >>> QATConfig(weights=quant.QuantConfig(bits=4)).to_dict()["weights"]["bits"]
          4
        """
        return json.loads(json.dumps(dataclasses.asdict(self)))

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
