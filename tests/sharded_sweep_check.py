"""Checks of the device-parallel sweeps under 8 forced CPU devices, run in a subprocess by
``tests/test_geometry_devices.py`` (``XLA_FLAGS`` must be set before jax initialises, so these
checks cannot run in the pytest process). Run directly: ``python tests/sharded_sweep_check.py``.

Prints ``OK`` on success; any failed check raises.
"""

import os
import sys


def main():
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )
    import jax
    import jax.numpy as jnp
    import numpy as np
    from test_geometry_sweep import init_mlp, mlp  # the sweep tests' model (tests/ is on sys.path)

    from bq_jax import geometry as G
    from bq_jax.geometry import engine as E

    assert jax.device_count() == 8, jax.devices()
    assert E.resolve_mesh(None).devices.size == 8  # default: all local devices
    assert E.resolve_mesh(False) is None and E.resolve_mesh(jax.devices()[:1]) is None

    x = np.random.default_rng(0).normal(size=(100, 5)).astype(np.float32)
    v = 3  # does not divide 8
    params = jax.tree.map(lambda *l: jnp.stack(l), *[init_mlp(jax.random.key(i)) for i in range(v)])
    slc = G.pca_slice(x, resolution=12)
    other = G.random_slice(jax.random.key(5), x, resolution=12)
    stacked = [slc, other, slc]  # K = 3 slices, does not divide 8
    half = G.device_mesh(jax.devices()[:4])
    for mode in ("map", "vmap"):
        kw = dict(chunk_size=50, variant_batching=mode)  # 50 does not divide 144
        for s in (slc, stacked):
            ref = np.asarray(G.sweep_logits(mlp, params, s, mesh=False, **kw))
            for mesh in (None, half) if mode == "map" else (None,):  # 8 and 4 devices
                out = np.asarray(G.sweep_logits(mlp, params, s, mesh=mesh, **kw))
                assert out.shape == ref.shape and np.array_equal(out, ref), (mode, mesh)
            ref = np.asarray(G.sweep_labels(mlp, params, s, mesh=False, **kw))
            assert np.array_equal(np.asarray(G.sweep_labels(mlp, params, s, **kw)), ref)
        ref = np.asarray(G.evaluate_logits(mlp, params, x, mesh=False, **kw))
        assert np.array_equal(np.asarray(G.evaluate_logits(mlp, params, x, **kw)), ref)

    # one variant on 8 devices: the points are split into blocks
    one = jax.tree.map(lambda l: l[:1], params)
    ref = np.asarray(G.sweep_logits(mlp, one, slc, chunk_size=16, mesh=False))
    assert np.array_equal(np.asarray(G.sweep_logits(mlp, one, slc, chunk_size=16)), ref)

    # no retrace / recompile for new parameter values or a new plane
    traces = []

    def counted(p, xb):
        traces.append(1)
        return mlp(p, xb)

    G.sweep_labels(counted, params, slc, chunk_size=50)
    n_traces, n_compiled = len(traces), E.sharded_jit._cache_size()
    for a in (2.0, -0.5):
        new = jax.tree.map(lambda l, a=a: a * l + 0.25, params)
        G.sweep_labels(counted, new, G.pca_slice(a * x + 1.0, resolution=12), chunk_size=50)
    assert len(traces) == n_traces and E.sharded_jit._cache_size() == n_compiled

    # NaN detection names the variant as on one device
    bad = jax.tree.map(lambda l: l, params)
    bad["w2"] = bad["w2"].at[1, 0, 0].set(jnp.nan)
    try:
        G.sweep_labels(mlp, bad, slc, chunk_size=50)
    except ValueError as e:
        assert "variant 1" in str(e) and "variant 0" not in str(e), e
    else:
        raise AssertionError("NaN logits not detected on the sharded path")

    # compare: identical metrics and maps with and without the mesh
    w = {"w": np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)}
    variants = {"w": np.stack([w["w"], np.round(w["w"] * 2) / 2])}

    def lin(p, xb):
        return xb @ p["w"]

    r1 = G.compare(lin, w, variants, slc, x[:60], x[60:], return_maps=True, mesh=False)
    r8 = G.compare(lin, w, variants, slc, x[:60], x[60:], return_maps=True)
    for k in r1:
        np.testing.assert_array_equal(r1[k], r8[k], err_msg=k)
    print("OK")


if __name__ == "__main__":
    main()
    sys.exit(0)
