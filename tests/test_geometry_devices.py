"""Device-parallel sweeps under 8 forced host CPU devices (bit-for-bit equal to one device, no
retrace), run in a subprocess because ``XLA_FLAGS`` must be set before jax initialises."""

import os
import pathlib
import subprocess
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


def test_sharded_sweeps_equal_single_device_under_8_host_devices():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    proc = subprocess.run(
        [sys.executable, str(HERE / "sharded_sweep_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK"), proc.stdout[-3000:]


def test_shard_plans_cover_every_slice_variant_and_point_once_or_more():
    from bq_jax.geometry import engine as E

    for s, v, n, chunk, mode, d in [
        (1, 3, 144, 50, "map", 8),
        (3, 3, 144, 50, "vmap", 8),
        (1, 1, 144, 16, "map", 8),
        (2, 64, 4096, 1024, "vmap", 4),
        (1, 5, 10, 64, "map", 2),
    ]:
        plan = E.shard_plan(s, v, n, chunk, mode, d)
        seen = np.zeros((s, v, n), bool)
        for t in range(plan.items):
            si, v0, p0 = plan.item(t)
            seen[si, v0 : v0 + plan.group, p0 : p0 + plan.block] = True
        assert seen.all(), plan
        assert plan.per_device * d >= plan.items
        assert plan.block == n or plan.block % min(chunk, n) == 0  # model calls keep the chunk
        if mode == "map":
            assert plan.group == 1
