"""Everything one training seed's studies share: the trained classifier, its data, the slices,
the quantized variants and their slice label maps (each computed once, on first use).

Three PCA slices are used, each the plane through the mean of a set of inputs (exactly as the
model sees them) spanned by its two leading principal components, on an R x R grid:

* ``"train"``:       training inputs. The slice of the bit sweep, interpolation and rounding.
* ``"calibration"``: calibration inputs only.
* ``"heldout"``:     held-out inputs.

The stopping, rounding, correlation and sensitivity studies measure their calibration and
held-out slice metrics on slice families instead (below): one plane per split is a high-variance
measurement.

Slice families (:func:`bq_jax.geometry.slice_family`, ``config.slice_family`` kind,
``config.slice_count`` planes at ``config.family_resolution``) are drawn from the calibration
inputs only and from the held-out inputs only (:data:`FAMILY_SPLITS`), each from its own key
(:meth:`SeedContext.family_key`); their per-slice metrics are memoised per variant.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np

from bq_jax import geometry, ptq, train
from bq_jax.quant import QuantConfig
from bq_jax.studies.config import BaseConfig, StudyError

__all__ = [
    "SeedContext",
    "SLICE_KINDS",
    "FAMILY_SPLITS",
    "FAMILY_SEED",
    "weight_config",
    "stable_key",
]

SLICE_KINDS = ("train", "calibration", "heldout")
#: Splits a slice family is drawn from (calibration decides, held-out judges).
FAMILY_SPLITS = ("calibration", "heldout")
#: Root of the slice families' keys: ``fold_in(fold_in(key(FAMILY_SEED), seed), split index)``.
FAMILY_SEED = 0x5F1CE


def stable_key(seed: int, *parts) -> jax.Array:
    """A PRNG key determined by ``seed`` and ``parts`` (ints and strings, e.g. a variant key):
    ``fold_in(key(seed), crc32(repr(parts)))``, the same in every process and call order.

    Example:
        >>> bool((jax.random.key_data(stable_key(0, "heldout", ("ptq", 4)))
        ...       == jax.random.key_data(stable_key(0, "heldout", ("ptq", 4)))).all())
        True
    """
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF)


# Inputs per forward pass when predicting a split (bounded memory on the larger data sets).
_BATCH = 2048


def weight_config(bits: int):
    """PTQ-W quantizer of the studies: ``bits``-bit signed, symmetric, per output channel,
    min-max range, round to nearest.

    Per-channel symmetric is the white paper's recommended weight quantizer: symmetric weights
    need no zero-point cross term in the integer matmul, and per-channel scales absorb the wide
    spread of ranges across output channels (with a per-tensor scale, channels with small
    weights collapse to a few levels at 4 bits and below). Min-max range keeps the comparison
    between bit widths free of a fitted clipping threshold.
    """
    return QuantConfig(bits=bits, symmetric=True, granularity="per_channel", axis=-1)


class SeedContext:
    """The trained classifier of one seed and the memoised pieces its studies share.

    Args:
        config: study settings.
        seed: training seed.
        cache_dir: checkpoint cache of bq_jax.train (None: bq_jax.train's default).
    """

    def __init__(self, config: BaseConfig, seed: int, *, cache_dir: str | None):
        self.config = config
        self.seed = seed
        try:
            model, variables, data = train.trained_classifier(
                config.dataset,
                seed=seed,
                cache_dir=cache_dir,
                data_dir=config.data_dir,
                model=config.model,
                quick=config.quick,
                subset=config.subset,
                progress=config.progress,
            )
        except (FileNotFoundError, OSError, ValueError) as e:
            raise StudyError(f"cannot load or train the {config.dataset} classifier: {e}") from e
        self.model = model
        self.model_name = getattr(model, "name", config.model)
        self.apply_fn = model.apply_fn
        self.float_params = variables
        self.data = data
        self._slices: dict = {}
        self._ptq: dict = {}
        self._labels: dict = {}
        self._predictions: dict = {}
        self._families: dict = {}
        self._family_metrics: dict = {}
        apply_fn = model.apply_fn
        self._predict = jax.jit(lambda p, x: jnp.argmax(apply_fn(p, x), axis=-1))
        self.float_accuracy = self.accuracy(variables, "heldout", key="float")

    # -- data ----------------------------------------------------------------------------------
    def inputs(self, split: str):
        """Inputs of ``split`` in {"train", "calibration", "heldout"}."""
        d = self.data
        return {"train": d.x_train, "calibration": d.x_calibration, "heldout": d.x_heldout}[split]

    def targets(self, split: str):
        d = self.data
        return {"train": d.y_train, "calibration": d.y_calibration, "heldout": d.y_heldout}[split]

    def predictions(self, params, split: str, key=None) -> np.ndarray:
        """Predicted labels int32[N] of ``params`` on ``split`` (memoised under ``key``)."""
        if key is not None and (key, split) in self._predictions:
            return self._predictions[(key, split)]
        x = self.inputs(split)
        pred = np.concatenate(
            [
                np.asarray(self._predict(params, x[i : i + _BATCH]))
                for i in range(0, x.shape[0], _BATCH)
            ]
        )
        if key is not None:
            self._predictions[(key, split)] = pred
        return pred

    def accuracy(self, params, split: str, key=None) -> float:
        """Accuracy of ``params`` on ``split``: mean(argmax logits == label)."""
        pred = self.predictions(params, split, key)
        return float(np.mean(pred == np.asarray(self.targets(split))))

    def flip_rate(self, params, split: str, key=None) -> float:
        """Fraction of ``split`` inputs whose predicted label differs from the float model's."""
        ref = self.predictions(self.float_params, split, "float")
        return float(np.mean(self.predictions(params, split, key) != ref))

    # -- slices and label maps -------------------------------------------------------------------
    def slice(self, kind: str):
        """The PCA slice of ``kind`` in :data:`SLICE_KINDS` at ``config.resolution``."""
        if kind not in SLICE_KINDS:
            raise ValueError(f"slice kind must be one of {SLICE_KINDS}, got {kind!r}")
        if kind not in self._slices:
            self._slices[kind] = geometry.pca_slice(
                self.inputs(kind), resolution=self.config.resolution
            )
        return self._slices[kind]

    def extent(self, kind: str) -> np.ndarray:
        """``(u_min, u_max, v_min, v_max)``: slice coordinates of the grid ends of ``kind``."""
        slc = self.slice(kind)
        return np.asarray(slc.extent, np.float64)

    def sweep(self, kind: str, params) -> np.ndarray:
        """Label map int32[R, R] of ``params`` on slice ``kind`` (not memoised)."""
        stack = ptq.stack_params([params])
        return np.asarray(geometry.sweep_labels(self.apply_fn, stack, self.slice(kind))[0])

    def remember_labels(self, kind: str, key, labels) -> None:
        """Memoise a label map computed elsewhere (e.g. by ``geometry.compare``)."""
        self._labels[(kind, key)] = np.asarray(labels)

    def labels(self, kind: str, key, params) -> np.ndarray:
        """Label map int32[R, R] of ``params`` on slice ``kind``, memoised under ``key``."""
        if (kind, key) not in self._labels:
            self._labels[(kind, key)] = self.sweep(kind, params)
        return self._labels[(kind, key)]

    def float_labels(self, kind: str) -> np.ndarray:
        return self.labels(kind, "float", self.float_params)

    # -- slice families --------------------------------------------------------------------------
    def family_key(self, split: str) -> jax.Array:
        """Key of the slice family of ``split``: ``fold_in(fold_in(key(FAMILY_SEED), seed),
        index of split in SLICE_KINDS)``."""
        base = jax.random.fold_in(jax.random.key(FAMILY_SEED), self.seed)
        return jax.random.fold_in(base, SLICE_KINDS.index(split))

    def family(self, split: str):
        """The stacked slice family of ``split`` in :data:`FAMILY_SPLITS` (memoised), drawn
        from that split's inputs only."""
        if split not in FAMILY_SPLITS:
            raise ValueError(f"family split must be one of {FAMILY_SPLITS}, got {split!r}")
        if split not in self._families:
            cfg = self.config
            self._families[split] = geometry.slice_family(
                self.family_key(split),
                self.inputs(split),
                kind=cfg.slice_family,
                count=cfg.slice_count,
                resolution=cfg.family_resolution,
            )
        return self._families[split]

    def family_metrics(self, split: str, keys, variants) -> list[dict]:
        """Per-slice metrics (:data:`bq_jax.geometry.FAMILY_METRICS`, each float64[K]) of every
        variant on the family of ``split``, memoised under its key; the variants not yet
        measured are swept together in one jitted call."""
        todo = [
            (k, v)
            for k, v in zip(keys, variants, strict=True)
            if (split, k) not in self._family_metrics
        ]
        if todo:
            stack = ptq.stack_params([v for _, v in todo])
            m = geometry.family_metrics(self.apply_fn, self.float_params, stack, self.family(split))
            for i, (k, _) in enumerate(todo):
                self._family_metrics[(split, k)] = {
                    name: np.asarray(m[name][:, i], np.float64) for name in geometry.FAMILY_METRICS
                }
            self._family_metrics[(split, "float")] = {
                "triple_junction_count": np.asarray(m["float_triple_junction_count"], np.float64)
            }
        return [self._family_metrics[(split, k)] for k in keys]

    # -- quantized variants ----------------------------------------------------------------------
    def ptq(self, bits: int):
        """PTQ-W variables at ``bits`` (see :func:`weight_config`)."""
        if bits not in self._ptq:
            self._ptq[bits] = ptq.quantize_weights(self.float_params, weight_config(bits))
        return self._ptq[bits]
