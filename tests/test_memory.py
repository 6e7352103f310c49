"""Memory of the grid sweep: the compiled program's temporary buffers are bounded by the chunk
(and grow with the number of variants), not by the grid: R^2 only sizes the output.

Measured with XLA's own accounting (``compiled.memory_analysis()``), so the test is exact and
fast: nothing is run, only compiled.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import geometry
from bq_jax.geometry import engine

D, H, K, CHUNK = 16, 32, 10, 1024


def _mlp(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]


def _memory(variants, resolution, labels):
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.normal(size=(variants, D, H)), jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(variants, H, K)), jnp.float32),
    }
    slc = geometry.pca_slice(rng.normal(size=(64, D)), resolution=resolution)
    compiled = engine.sweep_jit.lower(
        params, slc, apply_fn=_mlp, chunk_size=CHUNK, mode="vmap", labels=labels
    ).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    return analysis.temp_size_in_bytes, analysis.output_size_in_bytes


@pytest.mark.parametrize("labels", [True, False], ids=["labels", "logits"])
def test_sweep_temp_memory_is_bounded_by_the_chunk_not_the_grid(labels):
    temp = {}
    for v in (1, 8):
        for r in (64, 512):
            temp[v, r], out = _memory(v, r, labels)
            assert out >= v * r * r * (4 if labels else 4 * K)  # the output holds the grid
            # One chunk of every variant: inputs, hidden activations and logits, twice over.
            assert temp[v, r] <= 2 * v * CHUNK * (D + H + K) * 4, (v, r, temp[v, r])
        # 64x more grid points, (almost) the same temporary memory.
        assert temp[v, 512] <= 1.1 * temp[v, 64], temp
    # Variants are vmapped: temporary memory grows about linearly with their number (measured
    # on CPU: 10.6x for 8x the variants, the per-variant buffers being laid out separately).
    for r in (64, 512):
        assert temp[8, r] <= 8 * 1.5 * temp[1, r], temp
