"""Memory of the grid sweep: the compiled program's temporary buffers are bounded by the chunk
(and grow with the number of variants), not by the grid: R^2 only sizes the output.

Measured with XLA's own accounting (``compiled.memory_analysis()``), so the test is exact and
fast: nothing is run, only compiled.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import geometry
from bq_jax.geometry import engine

D, H, K, CHUNK = 16, 32, 10, 1024


def _mlp(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]


def _params_and_slice(variants, resolution):
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.normal(size=(variants, D, H)), jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(variants, H, K)), jnp.float32),
    }
    slc = geometry.pca_slice(rng.normal(size=(64, D)), resolution=resolution)
    return params, slc


def _analysed(lowered):
    """(temp bytes, output bytes) of a lowered program, by XLA's own accounting."""
    analysis = lowered.compile().memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    return analysis.temp_size_in_bytes, analysis.output_size_in_bytes


def _memory(variants, resolution, labels):
    params, slc = _params_and_slice(variants, resolution)
    return _analysed(
        engine.sweep_jit.lower(
            params, slc, apply_fn=_mlp, chunk_size=CHUNK, mode="vmap", labels=labels
        )
    )


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


# ----------------------------------------------------------------------------- compare's path

N_POINTS = 2048  # held-out + calibration points that compare evaluates


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _compare_sweep_and_eval(params_both, slc, points, *, chunk_size):
    """What geometry.compare compiles for a float model stacked with its variants (dense slice
    labels, same dtypes): the label sweep of the slice grid and the logits at the data points,
    both through engine's chunked loops (``engine.sweep_impl`` / ``engine.eval_impl``)."""
    labels, finite_s = engine.sweep_impl(
        params_both, slc, apply_fn=_mlp, chunk_size=chunk_size, mode="vmap", labels=True
    )
    logits, finite_e = engine.eval_impl(
        params_both, points, apply_fn=_mlp, chunk_size=chunk_size, mode="vmap", labels=False
    )
    return labels, logits, finite_s, finite_e


def _compare_memory(variants, resolution):
    params, slc = _params_and_slice(1 + variants, resolution)  # [float, variants...]
    points = jnp.zeros((N_POINTS, D), jnp.float32)
    return _analysed(_compare_sweep_and_eval.lower(params, slc, points, chunk_size=CHUNK))


def test_compare_sweep_and_evaluation_temp_memory_is_bounded_by_the_chunk():
    """compare's sweep + evaluation at R = 64 and 512 with 1 and 8 variants: the temporary
    buffers stay within a chunk per model, not R^2 x V (R^2 x V x 4 bytes is 8 MiB at R = 512,
    V = 9; the bound is ~0.4 MiB)."""
    temp = {}
    for v in (1, 8):
        models = 1 + v
        for r in (64, 512):
            temp[v, r], out = _compare_memory(v, r)
            assert out >= models * (r * r + N_POINTS * K) * 4  # the outputs hold grid and logits
            assert temp[v, r] <= 2 * models * CHUNK * (D + H + K) * 4, (v, r, temp[v, r])
        assert temp[v, 512] < models * 512 * 512 * 4, temp  # far below one grid of labels
        assert temp[v, 512] <= 1.1 * temp[v, 64], temp
    for r in (64, 512):
        assert temp[8, r] <= 9 / 2 * 1.5 * temp[1, r], temp
