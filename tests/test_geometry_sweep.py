"""Grid sweeps: correctness against direct evaluation, batching/chunking invariance, no retrace,
flat memory, many slices, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import geometry as G
from bq_jax.geometry import engine as E
from bq_jax.geometry import sweep as S


def mlp(params, x):
    h = x.reshape(x.shape[0], -1)
    h = jnp.tanh(h @ params["w1"] + params["b1"][None])
    return h @ params["w2"] + params["b2"][None]


def init_mlp(key, d=5, h=16, k=3):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w1": jax.random.normal(k1, (d, h)) / np.sqrt(d),
        "b1": 0.1 * jax.random.normal(k3, (h,)),
        "w2": jax.random.normal(k2, (h, k)) / np.sqrt(h),
        "b2": jnp.zeros((k,)),
    }


def stack(variants):
    return jax.tree.map(lambda *l: jnp.stack(l), *variants)


@pytest.fixture(scope="module")
def setup():
    variants = [init_mlp(jax.random.key(i)) for i in range(3)]
    x = np.random.default_rng(0).normal(size=(100, 5)).astype(np.float32)
    slc = G.pca_slice(x, resolution=12)
    return variants, stack(variants), slc, x


def test_sweep_matches_direct_evaluation(setup):
    variants, params, slc, _ = setup
    z = np.asarray(G.sweep_logits(mlp, params, slc, chunk_size=50))
    labels = np.asarray(G.sweep_labels(mlp, params, slc, chunk_size=50))
    assert z.shape == (3, 12, 12, 3) and labels.shape == (3, 12, 12)
    assert labels.dtype == np.int32
    pts = slc.points()
    for v, p in enumerate(variants):
        ref = np.asarray(mlp(p, pts)).reshape(12, 12, 3)
        np.testing.assert_allclose(z[v], ref, atol=1e-6, rtol=1e-5)
        np.testing.assert_array_equal(labels[v], ref.argmax(-1))
    # grid convention: [i, j] is at (u1[j], u2[i])
    u1, u2 = slc.coords()
    x_ij = slc.to_input(jnp.array([[u1[7], u2[2]]]))
    np.testing.assert_allclose(z[1, 2, 7], np.asarray(mlp(variants[1], x_ij))[0], atol=1e-6)


@pytest.mark.parametrize("mode", ["map", "vmap"])
def test_batched_equals_python_loop_bitwise(setup, mode):
    variants, params, slc, _ = setup
    z = np.asarray(G.sweep_logits(mlp, params, slc, chunk_size=50, variant_batching=mode))
    loop = np.stack(
        [
            np.asarray(G.sweep_logits(mlp, stack([p]), slc, chunk_size=50, variant_batching=mode))[
                0
            ]
            for p in variants
        ]
    )
    np.testing.assert_array_equal(z, loop)
    labels = G.sweep_labels(mlp, params, slc, chunk_size=50, variant_batching=mode)
    np.testing.assert_array_equal(labels, loop.argmax(-1))


def test_map_equals_vmap(setup):
    _, params, slc, _ = setup
    a = G.sweep_logits(mlp, params, slc, chunk_size=50, variant_batching="map")
    b = G.sweep_logits(mlp, params, slc, chunk_size=50, variant_batching="vmap")
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("chunk", [7, 72, 144, 1000])
def test_chunk_size_does_not_change_results(setup, chunk):
    # 7 and 50 do not divide R*R = 144 (last chunk shifted back), 1000 > R*R (one chunk).
    # Labels are identical. Logits agree to float32 rounding only: XLA:CPU picks its matmul
    # kernel by shape, so here chunks of <= 72 rows round identically while a [144, 5] @ [5, 16]
    # product differs from [50, 5] @ [5, 16] in the last bit of some entries.
    _, params, slc, _ = setup
    ref = G.sweep_logits(mlp, params, slc, chunk_size=50)
    z = G.sweep_logits(mlp, params, slc, chunk_size=chunk)
    np.testing.assert_allclose(z, ref, atol=1e-6, rtol=1e-5)
    np.testing.assert_array_equal(np.argmax(z, -1), np.argmax(ref, -1))
    np.testing.assert_array_equal(
        G.sweep_labels(mlp, params, slc, chunk_size=chunk), ref.argmax(-1)
    )


def test_jit_equals_eager(setup):
    _, params, slc, _ = setup
    small = G.Slice(
        origin=slc.origin,
        basis=slc.basis,
        u_min=slc.u_min,
        u_max=slc.u_max,
        resolution=4,
        input_shape=slc.input_shape,
    )
    jitted = E.sweep_jit(params, small, apply_fn=mlp, chunk_size=5, mode="map", labels=False)
    with jax.disable_jit():
        eager = E.sweep_impl(params, small, apply_fn=mlp, chunk_size=5, mode="map", labels=False)
    np.testing.assert_allclose(jitted[0], eager[0], atol=1e-6, rtol=1e-5)
    np.testing.assert_array_equal(jitted[1], eager[1])


def test_no_retrace_when_only_parameter_values_change(setup):
    _, params, slc, x = setup
    traces = []

    def counted(p, xb):  # a fresh function: its own jit cache entries
        traces.append(1)
        return mlp(p, xb)

    G.sweep_labels(counted, params, slc)
    assert len(traces) == 1
    G.sweep_labels(counted, jax.tree.map(lambda l: 2.0 * l + 1.0, params), slc)
    moved = G.pca_slice(x + 3.0, resolution=12)  # other plane, same resolution: no retrace
    G.sweep_labels(counted, params, moved)
    assert len(traces) == 1
    G.sweep_labels(counted, params, G.pca_slice(x, resolution=13))  # new static config
    assert len(traces) == 2


@pytest.mark.parametrize("mode", ["map", "vmap"])
def test_no_recompile_for_new_values_in_every_entry_point(setup, mode):
    # Counts traces of apply_fn and compilations of the engine's jitted functions: new
    # parameter values, a new plane or new inputs of the same shapes reuse the executable.
    _, params, slc, x = setup
    traces = []

    def counted(p, xb):
        traces.append(1)
        return mlp(p, xb)

    entries = (
        lambda p, s, xs: G.sweep_labels(counted, p, s, variant_batching=mode),
        lambda p, s, xs: G.sweep_logits(counted, p, s, variant_batching=mode),
        lambda p, s, xs: G.evaluate_logits(counted, p, xs, variant_batching=mode),
    )
    # apply_fn is traced once per input shape: the logits sweep reuses the labels sweep's
    # [144, 5] trace, evaluate_logits adds one for its [100, 5] chunk
    for entry, expected_traces in zip(entries, (1, 1, 2), strict=True):
        before = (E.sweep_jit._cache_size(), E.eval_jit._cache_size())
        entry(params, slc, x)
        assert len(traces) == expected_traces
        compiled = (E.sweep_jit._cache_size(), E.eval_jit._cache_size())
        assert sum(compiled) == sum(before) + 1
        for scale in (2.0, -0.5):
            new = jax.tree.map(lambda l, a=scale: a * l + 0.25, params)
            entry(new, G.pca_slice(scale * x + 1.0, resolution=12), scale * x)
        assert len(traces) == expected_traces
        assert (E.sweep_jit._cache_size(), E.eval_jit._cache_size()) == compiled


def test_memory_beyond_output_is_flat_in_resolution():
    params = stack([init_mlp(jax.random.key(i), d=16, h=32) for i in range(2)])
    x = np.random.default_rng(1).normal(size=(50, 16)).astype(np.float32)
    temp = []
    for r in (32, 512):
        slc = G.pca_slice(x, resolution=r)
        for mode in ("map", "vmap"):
            compiled = E.sweep_jit.lower(
                params, slc, apply_fn=mlp, chunk_size=256, mode=mode, labels=True
            ).compile()
            mem = compiled.memory_analysis()
            assert mem.output_size_in_bytes >= 2 * r * r * 4
            temp.append(mem.temp_size_in_bytes)
    # R=512 has 256x the points of R=32 (the points alone would be 16 MiB), yet the scratch
    # memory grows only by the two coordinate vectors u1, u2 (2 * 4 bytes * R) and rounding
    for small, big in ((temp[0], temp[2]), (temp[1], temp[3])):
        assert big - small <= 2 * 4 * 512 + 1024, (small, big)


def test_many_slices_stacked_or_listed(setup):
    _, params, slc, x = setup
    other = G.random_slice(jax.random.key(5), x, resolution=12)
    both = G.sweep_labels(mlp, params, [slc, other], chunk_size=50)
    assert both.shape == (2, 3, 12, 12)
    np.testing.assert_array_equal(both[0], G.sweep_labels(mlp, params, slc, chunk_size=50))
    np.testing.assert_array_equal(both[1], G.sweep_labels(mlp, params, other, chunk_size=50))
    stacked = G.stack_slices([slc, other])
    np.testing.assert_array_equal(G.sweep_labels(mlp, params, stacked, chunk_size=50), both)


def test_image_inputs_reach_the_model_in_their_shape():
    def conv_net(p, x):
        assert x.shape[1:] == (6, 6, 2)
        y = jax.lax.conv_general_dilated(
            x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.mean(jax.nn.relu(y), axis=(1, 2)) @ p["w"]

    key = jax.random.key(0)
    p = {"k": jax.random.normal(key, (3, 3, 2, 4)), "w": jax.random.normal(key, (4, 3))}
    x = np.random.default_rng(0).normal(size=(20, 6, 6, 2)).astype(np.float32)
    slc = G.pca_slice(x, resolution=5)
    z = G.sweep_logits(conv_net, stack([p]), slc, chunk_size=8)
    ref = conv_net(p, slc.points(flat=False).reshape(25, 6, 6, 2)).reshape(5, 5, 3)
    np.testing.assert_allclose(z[0], ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(
        G.evaluate_logits(conv_net, stack([p]), x)[0], conv_net(p, x), atol=1e-5
    )


def test_mismatched_variant_axes_raise(setup):
    _, params, slc, _ = setup
    bad = dict(params, b2=params["b2"][:2])
    with pytest.raises(ValueError, match=r"share one leading variant axis.*\['b2'\]: 2"):
        G.sweep_labels(mlp, bad, slc)
    with pytest.raises(ValueError, match="scalar"):
        G.sweep_labels(mlp, dict(params, b2=jnp.float32(0.0)), slc)


def test_nan_logits_raise_naming_the_variants(setup):
    variants, _, slc, x = setup
    broken = dict(variants[1], w2=variants[1]["w2"].at[0, 0].set(jnp.nan))
    params = stack([variants[0], broken, variants[2]])
    for fn in (G.sweep_labels, G.sweep_logits):
        with pytest.raises(ValueError, match=r"NaN or inf logits on the slice grid for variant 1;"):
            fn(mlp, params, slc)
    with pytest.raises(ValueError, match="variant 1"):
        G.evaluate_logits(mlp, params, x)
    labels = G.sweep_labels(mlp, params, slc, check_finite=False)
    assert labels.shape == (3, 12, 12)


def test_bad_arguments_raise(setup):
    _, params, slc, _ = setup
    with pytest.raises(ValueError, match="variant_batching must be one of"):
        G.sweep_labels(mlp, params, slc, variant_batching="loop")
    with pytest.raises(ValueError, match="chunk_size"):
        G.sweep_labels(mlp, params, slc, chunk_size=0)
    with pytest.raises(TypeError, match="Slice"):
        G.sweep_labels(mlp, params, np.zeros((4, 4)))


def test_defaults_per_backend():
    assert S.resolve_variant_batching("auto", "cpu") == "map"
    assert S.resolve_variant_batching("auto", "gpu") == "vmap"
    assert G.default_chunk_size(64, "cpu") & (G.default_chunk_size(64, "cpu") - 1) == 0
    assert G.default_chunk_size(3072, "cpu") <= G.default_chunk_size(64, "cpu")
    # under vmap the V variants share the chunk budget, so scratch memory does not grow with V
    assert G.default_chunk_size(64, "cpu", variants=8) == G.default_chunk_size(64, "cpu") // 8
    assert G.default_chunk_size(64, "cpu", variants=3) == G.default_chunk_size(64, "cpu") // 4
    assert G.default_chunk_size(3072, "cpu", variants=64) == 64  # the floor
