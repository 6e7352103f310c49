"""End to end on the trained digits MLP: 8-bit PTQ-W keeps (almost) every held-out label
while its decision boundary on the PCA slice still moves (boundary Jaccard clearly > 0)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import geometry, ptq, train
from bq_jax.quant import QuantConfig


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    cache = tmp_path_factory.mktemp("ckpt")
    model, variables, data = train.trained_classifier(
        "digits", seed=0, cache_dir=str(cache), quick=True, progress=False
    )
    return model.apply_fn, variables, data


def test_ptq_w8_keeps_labels_but_moves_the_boundary(digits):
    apply_fn, v, data = digits
    w8 = QuantConfig(bits=8, symmetric=True, granularity="per_channel")
    v8, rows = ptq.quantize_weights(v, w8, return_summary=True)
    assert [r["path"] for r in rows] == [f"params/Dense_{i}/kernel" for i in range(3)]
    assert all(r["sqnr_db"] > 35.0 for r in rows)
    run = jax.jit(apply_fn)
    lf = np.asarray(jnp.argmax(run(v, data.x_test), -1))
    l8 = np.asarray(jnp.argmax(run(v8, data.x_test), -1))
    flip = float(np.mean(lf != l8))
    assert flip <= 2 / len(lf), flip  # at most 2 of 450 held-out labels change
    slc = geometry.pca_slice(data.x_train, resolution=64)
    labels = geometry.sweep_labels(apply_fn, ptq.stack_params([v, v8]), slc)
    masks = geometry.boundary_mask(labels)
    bj = float(geometry.boundary_jaccard(masks[0], masks[1]))
    assert bj > 0.01, bj
    # 4 bits moves the boundary further than 8 bits.
    v4 = ptq.quantize_weights(v, QuantConfig(bits=4, symmetric=True, granularity="per_channel"))
    m4 = geometry.boundary_mask(geometry.sweep_labels(apply_fn, ptq.stack_params([v4]), slc))
    assert float(geometry.boundary_jaccard(masks[0], m4[0])) > bj


def test_w8a8_on_digits(digits):
    """Activation quantization on the trained MLP: 16 bits ~ float, W8A8 changes few labels."""
    apply_fn, v, data = digits
    run = jax.jit(apply_fn)
    ref_cal, ref_test = run(v, data.x_calibration), run(v, data.x_test)
    a16 = QuantConfig(bits=16, symmetric=False)
    apply_q, pq = ptq.quantize_activations(apply_fn, v, data.x_calibration, a16)
    got = jax.jit(apply_q)(pq, data.x_calibration)
    scale = float(jnp.max(jnp.abs(ref_cal)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref_cal), atol=1e-3 * scale, rtol=0)
    w8 = QuantConfig(bits=8, symmetric=True, granularity="per_channel")
    a8 = QuantConfig(bits=8, symmetric=False, range_method="percentile", percentile=99.9)
    apply_q8, pq8 = ptq.quantize_activations(
        apply_fn, ptq.quantize_weights(v, w8), data.x_calibration, a8
    )
    l8 = np.asarray(jnp.argmax(jax.jit(apply_q8)(pq8, data.x_test), -1))
    flip = float(np.mean(l8 != np.asarray(jnp.argmax(ref_test, -1))))
    assert flip <= 0.02, flip
