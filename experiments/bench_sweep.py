"""Throughput, FLOP/s, memory and compile time of the grid sweeps (``bq_jax.geometry.sweep``).

For each model and each grid resolution R and variant count V, the script compiles the sweep
``sweep_labels`` runs (ahead of time, so compile time is measured apart from run time) for
every variant-batching mode, runs it in ``--repeats`` rounds (each round runs every candidate
of the (R, V) group once: the sweeps, the loops below and the square matmul, so load from
other processes hits them alike) and prints:

* ``pts*V/s``: grid points x variants evaluated per second (best of the rounds);
* ``GFLOP/s`` and ``frac``: achieved FLOP/s and its fraction of a large jitted square
  matmul's FLOP/s timed in the same rounds (FLOPs per point from XLA's cost analysis of
  ``apply_fn`` compiled on a batch of points, times points x variants);
* ``temp MiB`` / ``out MiB``: the compiled executable's scratch memory and output size
  (``memory_analysis``); the output (int32 labels, V R^2 entries) necessarily grows with R,
  the scratch memory is what the chunking keeps flat;
* ``compile s`` and ``run s``;
* the same work as a plain Python loop over variants, two ways, in the same run:
  ``loop-whole`` calls one jitted whole-grid evaluation per variant (all R^2 points in one
  batch), ``loop-chunked`` calls ``sweep_labels`` once per variant (V = 1); ``x whole`` /
  ``x chunked`` are the speed-ups of the batched sweep over them.

Models: ``mlp`` on digits-shaped inputs (64 features, the digits default), ``resnet`` (the
cifar10 default of ``bq_jax.train.DEFAULT_MODELS``) and the small ``cnn`` on CIFAR-shaped
inputs (32x32x3). Parameters are V independent initialisations; the slice is the PCA slice of
256 Gaussian inputs (throughput does not depend on the values). A configuration whose
points x variants x FLOPs-per-point exceeds ``--max-gflop`` is skipped and listed with its
estimated work; the whole-grid loop is skipped when its compiled memory exceeds
``--max-loop-mib``; skipped configurations are still compiled, for their compile time and
memory. On a CPU the CIFAR models exceed the default budget at every R >= 256; run them at a
smaller R (e.g. ``--models resnet cnn --resolutions 32 64 --variants 1 8 --max-gflop 200``).

Two further benchmarks (issue 13), each run instead of the throughput tables:

* ``--device-scaling``: the same sweep on 1, 2, 4, 8 devices of a mesh (``mesh=``), in a
  subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``; prints run time,
  points x variants per second and whether the labels equal the 1-device run bit for bit.
  Forced host devices are NOT real devices (they share the CPU cores): on CPU this checks
  correctness and shows the sharding overhead; speed-ups need a multi-accelerator host.
* ``--adaptive``: :func:`bq_jax.geometry.adaptive_labels` (corner and certified rules) vs the
  dense ``sweep_labels`` map on the digits MLP and a digits CNN (8 x 8 x 1), trained for
  ``--train-steps`` Adam steps, V = 2 (float and a 1/8-rounded copy): model evaluations, time,
  and whether the labels are identical. About 2 minutes on 2 shared cores with
  ``--mlp-resolutions 256 1024 4096 --cnn-resolutions 256 1024``.
* ``--torch``: ``sweep_labels`` vs a plain PyTorch eager plane loader on identical weights:
  the digits-trained ``mlp`` / ``cnn`` (V variants: the float model and copies rounded to
  1/4, 1/8, ...) rebuilt in torch with the flax weights copied in, the same R x R points
  (``origin + u1 * P[:, 0] + u2 * P[:, 1]`` from the same ``Slice``) evaluated chunk by chunk
  per variant under ``torch.no_grad()`` on CPU. Prints both times, points x variants per
  second, the ratio (torch time / bq_jax time, same rounds, same process), the fraction and
  count of grid points whose labels differ and the largest top-2 logit gap (bq_jax's float32
  logits) among them: float32 rounding differences flip only near-ties. torch threads:
  ``torch.set_num_threads`` = the cores of this process unless ``--torch-threads``. Needs
  the ``bench`` extra (``pip install 'bq_jax[bench]'``); torch is imported only here.

Command (on 2 CPU cores shared with other jobs: about 2 minutes with --quick, 6 with the
defaults)::

    python experiments/bench_sweep.py [--quick] [--models mlp resnet cnn]
        [--resolutions 256 512 1024 2048] [--variants 1 8 64] [--repeats 3] [--min-time 1]
        [--modes map vmap] [--chunk-sizes 1024 8192] [--max-gflop 150] [--max-loop-mib 3072]
    python experiments/bench_sweep.py --device-scaling [--scaling-r 512] [--scaling-v 8]
    python experiments/bench_sweep.py --adaptive [--mlp-resolutions 256 1024 4096]
        [--cnn-resolutions 256 1024] [--train-steps 200]
    python experiments/bench_sweep.py --torch [--torch-models mlp cnn]
        [--torch-resolutions 256 512] [--torch-variants 1 8] [--torch-threads N]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bq_jax import geometry as G
from bq_jax.geometry import engine as E
from bq_jax.geometry import sweep as S
from bq_jax.models import make_model
from bq_jax.train import DEFAULT_MODELS

INPUT_SHAPES = {"mlp": (64,), "cnn": (32, 32, 3), "resnet": (32, 32, 3)}
DATA_NAMES = {"mlp": "digits-shaped (64,)", "cnn": "cifar10-shaped", "resnet": "cifar10-shaped"}


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return cost or {}


def _loop(fn, variants, slc):
    return [fn(p, slc) for p in variants]


def _time_interleaved(cands: dict, repeats: int, min_time: float = 0.0) -> dict:
    """Best wall time of each candidate over rounds that run every candidate once (after one
    warm-up call each), so that load from other processes hits all candidates alike.

    Runs ``repeats`` rounds, then more (at most ``8 * repeats`` in all) until the fastest
    candidate has been timed for ``min_time`` seconds in total: short runs get more chances at
    an undisturbed window.
    """
    for fn in cands.values():
        jax.block_until_ready(fn())
    best = dict.fromkeys(cands, math.inf)
    spent = dict.fromkeys(cands, 0.0)
    rounds = 0
    while rounds < repeats or (min(spent.values()) < min_time and rounds < 8 * repeats):
        for k, fn in cands.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            dt = time.perf_counter() - t0
            best[k] = min(best[k], dt)
            spent[k] += dt
        rounds += 1
    return best


def matmul_candidate(n: int):
    """``(fn, flops)``: a jitted float32 ``[n, n] @ [n, n]`` and its 2 n^3 FLOPs."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    return functools.partial(jax.jit(jnp.matmul), a, b), 2.0 * n**3


def matmul_flops(n: int, repeats: int) -> float:
    fn, flops = matmul_candidate(n)
    return flops / _time_interleaved({"matmul": fn}, repeats)["matmul"]


def flops_per_point(apply_fn, params, x) -> float:
    compiled = jax.jit(apply_fn).lower(params, x).compile()
    return float(_cost(compiled).get("flops", float("nan"))) / x.shape[0]


def whole_grid_fn(apply_fn):
    """One jitted evaluation of one variant on every grid point at once."""

    def run(params, slc):
        x = slc.points(flat=False).reshape((slc.num_points,) + slc.input_shape)
        return jnp.argmax(apply_fn(params, x), axis=-1).astype(jnp.int32)

    return jax.jit(run)


def mib(nbytes) -> float:
    return nbytes / 2**20


def bench_model(name, args, peak, rows, skipped):
    shape = INPUT_SHAPES[name]
    model = make_model(name, num_classes=10, input_shape=shape)
    apply_fn = model.apply_fn  # one object for every call: the sweep cache is keyed on it
    dim = math.prod(shape)
    x = np.random.default_rng(0).normal(size=(256,) + shape).astype(np.float32)
    v_max = max(args.variants)
    all_variants = [model.init(jax.random.key(i)) for i in range(v_max)]
    chunk_default = S.default_chunk_size(dim)

    def default_chunk(mode, v):  # what sweep_labels uses with chunk_size=None
        return S.default_chunk_size(dim, variants=v if mode == "vmap" else 1)

    fpp = flops_per_point(apply_fn, all_variants[0], x[: min(chunk_default, 256)])
    print(
        f"\n== {name} ({DATA_NAMES[name]}, D={dim}): {fpp / 1e3:.1f} kFLOP per point (XLA cost "
        f"analysis), default chunk {chunk_default} points (divided by V under vmap), auto "
        f"batching = "
        f"{S.resolve_variant_batching('auto')}"
    )
    hdr = (
        f"{'R':>5} {'V':>3} {'mode':>5} {'chunk':>6} {'compile s':>9} {'run s':>8} "
        f"{'pts*V/s':>9} {'GFLOP/s':>8} {'frac':>5} {'temp MiB':>8} {'out MiB':>7}"
    )
    print(hdr)
    whole = whole_grid_fn(apply_fn)
    matmul_fn, matmul_work = matmul_candidate(args.matmul_size)
    for r in args.resolutions:
        slc = G.pca_slice(x, resolution=r)
        n = r * r
        for v in args.variants:
            work = n * v * fpp
            stack = jax.tree.map(lambda *l: jnp.stack(l), *all_variants[:v])
            if work > args.max_gflop * 1e9:
                skipped.append(
                    f"{name} R={r} V={v}: {work / 1e9:.0f} GFLOP per run > --max-gflop "
                    f"{args.max_gflop:g} (~{work / (0.5 * peak):.0f} s at half the matmul rate); "
                    "compiled only"
                )
                for mode in args.modes:
                    chunk = default_chunk(mode, v)
                    t0 = time.perf_counter()
                    compiled = E.sweep_jit.lower(
                        stack, slc, apply_fn=apply_fn, chunk_size=chunk, mode=mode, labels=True
                    ).compile()
                    mem = compiled.memory_analysis()
                    row = dict(
                        model=name,
                        R=r,
                        V=v,
                        mode=mode,
                        chunk=chunk,
                        default_chunk=True,
                        run_s=None,
                        compile_s=time.perf_counter() - t0,
                        temp=mem.temp_size_in_bytes,
                        out=mem.output_size_in_bytes,
                    )
                    rows.append(row)
                    print(
                        f"{r:>5} {v:>3} {mode:>5} {chunk:>6} {row['compile_s']:>9.2f} "
                        f"{'(not run: work budget)':>38} {mib(row['temp']):>8.1f} "
                        f"{mib(row['out']):>7.1f}"
                    )
                continue
            singles = [jax.tree.map(lambda l, i=i: l[i], stack) for i in range(v)]
            one = [jax.tree.map(lambda l: l[None], p) for p in singles]
            cands, info = {}, {}
            for mode in args.modes:
                for chunk in args.chunk_sizes or [default_chunk(mode, v)]:
                    t0 = time.perf_counter()
                    compiled = E.sweep_jit.lower(
                        stack, slc, apply_fn=apply_fn, chunk_size=chunk, mode=mode, labels=True
                    ).compile()
                    mem = compiled.memory_analysis()
                    info[(mode, chunk)] = dict(
                        compile_s=time.perf_counter() - t0,
                        temp=mem.temp_size_in_bytes,
                        out=mem.output_size_in_bytes,
                    )
                    cands[(mode, chunk)] = functools.partial(compiled, stack, slc)
            # loop 1: one jitted whole-grid evaluation per variant
            t0 = time.perf_counter()
            loop_compiled = whole.lower(singles[0], slc).compile()
            loop_mem = loop_compiled.memory_analysis()
            loop_mib = mib(loop_mem.temp_size_in_bytes + loop_mem.output_size_in_bytes)
            info["loop-whole"] = dict(compile_s=time.perf_counter() - t0, mib=loop_mib)
            if loop_mib > args.max_loop_mib:
                skipped.append(
                    f"{name} R={r} V={v} loop-whole: {loop_mib:.0f} MiB > --max-loop-mib "
                    f"{args.max_loop_mib:g}"
                )
            else:
                cands["loop-whole"] = functools.partial(_loop, loop_compiled, singles, slc)
            # loop 2: sweep_labels per variant (V = 1, chunked like the batched sweep)
            sweep_one = functools.partial(G.sweep_labels, apply_fn)
            cands["loop-chunked"] = functools.partial(_loop, sweep_one, one, slc)
            cands["matmul"] = matmul_fn
            times = _time_interleaved(cands, args.repeats, args.min_time)
            mm_rate = matmul_work / times["matmul"]
            sweeps = ((k, t) for k, t in times.items() if isinstance(k, tuple))
            for (mode, chunk), t_run in sweeps:
                flops = work / t_run
                row = dict(
                    model=name,
                    R=r,
                    V=v,
                    mode=mode,
                    chunk=chunk,
                    default_chunk=chunk == default_chunk(mode, v),
                    run_s=t_run,
                    rate=n * v / t_run,
                    flops=flops,
                    frac=flops / mm_rate,
                    matmul=mm_rate,
                    **info[(mode, chunk)],
                )
                rows.append(row)
                print(
                    f"{r:>5} {v:>3} {mode:>5} {chunk:>6} {row['compile_s']:>9.2f} {t_run:>8.3f} "
                    f"{n * v / t_run:>9.3g} {flops / 1e9:>8.1f} {flops / mm_rate:>5.2f} "
                    f"{mib(row['temp']):>8.1f} {mib(row['out']):>7.1f}"
                )
            auto_mode = S.resolve_variant_batching("auto")
            sweep_times = [t for k, t in times.items() if isinstance(k, tuple)]
            t_auto = times.get((auto_mode, default_chunk(auto_mode, v)), min(sweep_times))
            w = info["loop-whole"]
            msg = f"{r:>5} {v:>3} loop-whole: compile {w['compile_s']:.2f} s, {w['mib']:.0f} MiB"
            if "loop-whole" in times:
                t = times["loop-whole"]
                msg += f", run {t:.3f} s; auto sweep x{t / t_auto:.2f} faster"
                rows.append(dict(model=name, R=r, V=v, mode="loop-whole", run_s=t))
            else:
                msg += " (not run: memory)"
            t = times["loop-chunked"]
            rows.append(dict(model=name, R=r, V=v, mode="loop-chunked", run_s=t))
            print(msg + f" | loop-chunked: run {t:.3f} s; auto sweep x{t / t_auto:.2f} faster")
            print(f"{r:>5} {v:>3} matmul in the same rounds: {mm_rate / 1e9:.1f} GFLOP/s")


def summary(rows, peak):
    mlp = [r for r in rows if r["model"] == "mlp" and r.get("default_chunk", True)]
    if not mlp:
        return
    print("\n== targets (mlp, R=512, V=8, default chunk, auto batching)")
    auto_mode = S.resolve_variant_batching("auto")

    def get(r, v, mode):
        return [x for x in mlp if x["R"] == r and x["V"] == v and x["mode"] == mode]

    sweep = [x for x in get(512, 8, auto_mode) if x["run_s"] is not None]
    if sweep:
        s = min(sweep, key=lambda x: x["run_s"])
        for base in ("loop-whole", "loop-chunked"):
            b = get(512, 8, base)
            if b:
                ratio = b[0]["run_s"] / s["run_s"]
                print(f"  speed-up over {base}: x{ratio:.2f} (target >= 1.5: {ratio >= 1.5})")
        frac = s["frac"]
        print(
            f"  {s['flops'] / 1e9:.1f} GFLOP/s = {frac:.2f} of the square matmul's "
            f"{s['matmul'] / 1e9:.1f} GFLOP/s in the same rounds (target >= 0.6: {frac >= 0.6})"
        )
        top = max(peak, *(x["matmul"] for x in rows if "matmul" in x))
        print(
            f"  = {s['flops'] / top:.2f} of the fastest square matmul seen in this run "
            f"({top / 1e9:.1f} GFLOP/s)"
        )
    for v in sorted({x["V"] for x in mlp}):
        lo, hi = get(256, v, auto_mode), get(2048, v, auto_mode)
        if lo and hi:
            a, b = min(x["temp"] for x in lo), min(x["temp"] for x in hi)
            ta, tb = a + lo[0]["out"], b + hi[0]["out"]
            print(
                f"  V={v}: scratch memory R=2048 / R=256 = {mib(b):.2f} / {mib(a):.2f} MiB = "
                f"x{b / a:.3f} (target <= 1.3: {b / a <= 1.3}); with the int32 output "
                f"{mib(tb):.1f} / {mib(ta):.1f} MiB = x{tb / ta:.1f}"
            )


# -- (a) device scaling over forced host CPU devices --------------------------------------------


def device_scaling_worker(args):
    """Runs inside a process started with ``--xla_force_host_platform_device_count``: the same
    sweep on 1, 2, 4, 8 devices of one mesh, checked bit for bit against 1 device, and timed.

    The forced devices are NOT real devices: they are XLA:CPU partitions sharing this machine's
    cores, so the timings show the overhead of sharding, not a speed-up; speed needs real
    accelerators (run the same code with ``--device-scaling`` on a multi-GPU/TPU host)."""
    model = make_model("mlp", num_classes=10, input_shape=(64,))
    x = np.random.default_rng(0).normal(size=(256, 64)).astype(np.float32)
    stack = jax.tree.map(
        lambda *l: jnp.stack(l), *[model.init(jax.random.key(i)) for i in range(args.scaling_v)]
    )
    print(
        f"\n== device scaling: mlp (D=64), R={args.scaling_r}, V={args.scaling_v}, "
        f"{jax.device_count()} forced CPU devices on {os.cpu_count()} cores (NOT real devices)"
    )
    print(f"{'devices':>7} {'mode':>5} {'run s':>8} {'pts*V/s':>9} {'== 1 device':>11}")
    slc = G.pca_slice(x, resolution=args.scaling_r)
    n = slc.num_points * args.scaling_v
    for mode in args.modes:
        ref = None
        for d in args.scaling_devices:
            if d > jax.device_count():
                continue
            mesh = G.device_mesh(jax.devices()[:d]) if d > 1 else False
            fn = functools.partial(
                G.sweep_labels, model.apply_fn, stack, slc, variant_batching=mode, mesh=mesh
            )
            out = np.asarray(fn())
            ref = out if ref is None else ref
            same = np.array_equal(out, ref)
            t = _time_interleaved({"s": fn}, args.repeats)["s"]
            print(f"{d:>7} {mode:>5} {t:>8.3f} {n / t:>9.3g} {str(same):>11}")


def device_scaling(args):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={max(args.scaling_devices)}"
    )
    cmd = [sys.executable, __file__, "--device-scaling-worker", "--repeats", str(args.repeats)]
    cmd += ["--scaling-r", str(args.scaling_r), "--scaling-v", str(args.scaling_v)]
    cmd += ["--scaling-devices", *map(str, args.scaling_devices), "--modes", *args.modes]
    subprocess.run(cmd, env=env, check=True)


# -- (b) adaptive vs dense label maps ------------------------------------------------------------


def _digits_trained(name, steps):
    """``(apply_fn, params_stack, x)``: the digits ``mlp`` (inputs (64,)) or a ``cnn`` on the
    8 x 8 x 1 digit images, trained ``steps`` full-batch Adam steps, stacked with a copy whose
    weights are rounded to a 1/8 grid (a quantized-like variant)."""
    import optax
    from sklearn.datasets import load_digits

    d = load_digits()
    x = ((d.data - d.data.mean(0)) / (d.data.std(0) + 1e-6)).astype(np.float32)
    shape = (64,) if name == "mlp" else (8, 8, 1)
    x = x.reshape((-1,) + shape)
    y = jnp.asarray(d.target.astype(np.int32))
    model = make_model(name, num_classes=10, input_shape=shape)
    params = model.init(jax.random.key(0))
    tx = optax.adam(1e-2)

    def loss(p):
        z = model.apply_fn(p, jnp.asarray(x))
        return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    s = tx.init(params)
    for _ in range(steps):
        params, s = step(params, s)
    rounded = jax.tree.map(lambda l: jnp.round(l * 8) / 8, params)
    return model.apply_fn, jax.tree.map(lambda *l: jnp.stack(l), params, rounded), x


def adaptive_vs_dense(args):
    print(
        "\n== adaptive vs dense label maps (digits-trained models, V = 2: float and a 1/8-rounded "
        "copy; evaluations summed over the variants; times after one warm-up call)"
    )
    print(
        f"{'model':>5} {'R':>5} {'rule':>9} {'evals':>10} {'dense':>10} {'fewer':>7} "
        f"{'adapt s':>8} {'dense s':>8} {'speed-up':>8} {'labels ==':>9} {'L':>6}"
    )
    for name in args.adaptive_models:
        apply_fn, stack, x = _digits_trained(name, args.train_steps)
        for r in args.adaptive_resolutions.get(name, ()):
            slc = G.pca_slice(x, resolution=r)
            dense_fn = functools.partial(G.sweep_labels, apply_fn, stack, slc)
            dense = np.asarray(dense_fn())
            t_dense = _time_interleaved({"d": dense_fn}, 1)["d"]
            for certified in (False, True):
                fn = functools.partial(G.adaptive_labels, apply_fn, stack, slc, certified=certified)
                res = fn()  # warm-up (compiles the buckets)
                t0 = time.perf_counter()
                res = fn()
                t = time.perf_counter() - t0
                ev = int(res.evaluations.sum())
                full = res.dense_evaluations * dense.shape[0]
                same = np.array_equal(res.labels, dense)
                agree = np.mean(res.labels == dense)
                lip = f"{np.max(res.lipschitz):.1f}" if certified else "-"
                print(
                    f"{name:>5} {r:>5} {'certified' if certified else 'corners':>9} {ev:>10} "
                    f"{full:>10} {full / ev:>6.1f}x {t:>8.2f} {t_dense:>8.2f} "
                    f"{t_dense / t:>7.2f}x {str(same) if same else f'{agree:.6f}':>9} {lip:>6}"
                )


# -- (c) side by side with a plain PyTorch eager plane loader --------------------------------------


def _digits_variants(name, steps, v):
    """``(apply_fn, stack, x)``: V variants of the digits-trained ``name``: the float model and
    copies with weights rounded to grids of 1/4, 1/8, ... (``v`` in all)."""
    apply_fn, stack, x = _digits_trained(name, steps)
    params = jax.tree.map(lambda l: l[0], stack)
    variants = [params] + [
        jax.tree.map(lambda l, q=2.0 ** (k + 2): jnp.round(l * q) / q, params) for k in range(v - 1)
    ]
    return apply_fn, jax.tree.map(lambda *l: jnp.stack(l), *variants), x


def _torch_module(torch, name, params):
    """A torch ``nn.Module`` computing the flax ``mlp`` / ``cnn`` (default hyperparameters) with
    the weights of ``params`` copied in: Dense kernels (in, out) -> Linear weights (out, in),
    Conv kernels HWIO -> OIHW; the CNN runs in NCHW and flattens in flax's (H, W, C) order."""
    nn = torch.nn
    p = params["params"]

    def t(a):
        return torch.from_numpy(np.array(a, np.float32))

    def linear(d):
        m = nn.Linear(*np.shape(d["kernel"]))
        m.weight.data, m.bias.data = t(d["kernel"]).T.contiguous(), t(d["bias"])
        return m

    def conv(d):
        kh, kw, cin, cout = np.shape(d["kernel"])
        m = nn.Conv2d(cin, cout, (kh, kw), padding=(kh // 2, kw // 2))
        m.weight.data = t(d["kernel"]).permute(3, 2, 0, 1).contiguous()
        m.bias.data = t(d["bias"])
        return m

    denses = [linear(p[f"Dense_{i}"]) for i in range(len([k for k in p if "Dense" in k]))]
    convs = [conv(p[f"Conv_{i}"]) for i in range(len([k for k in p if "Conv" in k]))]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs, self.denses = nn.ModuleList(convs), nn.ModuleList(denses)

        def forward(self, x):  # x: [N, 64] flat digits inputs
            if name == "cnn":
                x = x.reshape(-1, 8, 8, 1).permute(0, 3, 1, 2)
                for c in self.convs:
                    x = torch.nn.functional.max_pool2d(torch.relu(c(x)), 2)
                x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
            for d in self.denses[:-1]:
                x = torch.relu(d(x))
            return self.denses[-1](x)

    return Net().eval()


def _torch_plane_labels(torch, nets, slc, chunk):
    """Labels int32[V, R, R] of each torch net on the slice's grid, the plain eager way: for each
    variant, for each chunk of ``chunk`` points, ``x = origin + u1 * P[:, 0] + u2 * P[:, 1]`` (the
    same points and formula as ``Slice.to_flat``) and ``argmax`` of the logits."""
    r = slc.resolution
    u = torch.from_numpy(np.array(slc.grid_u()).reshape(r * r, 2))
    o = torch.from_numpy(np.array(slc.origin))
    p0 = torch.from_numpy(np.asarray(slc.basis)[:, 0].copy())
    p1 = torch.from_numpy(np.asarray(slc.basis)[:, 1].copy())
    out = torch.empty((len(nets), r * r), dtype=torch.int32)
    with torch.no_grad():
        for v, net in enumerate(nets):
            for s in range(0, r * r, chunk):
                uc = u[s : s + chunk]
                x = o + uc[:, :1] * p0 + uc[:, 1:] * p1
                out[v, s : s + chunk] = net(x).argmax(dim=-1)
    return out.numpy().reshape(len(nets), r, r)


def torch_side_by_side(args):
    try:
        import torch
    except ImportError:
        sys.exit(
            "--torch needs PyTorch, an optional benchmark dependency: pip install 'bq_jax[bench]' "
            "(or pip install torch, a CPU build is enough)"
        )
    threads = args.torch_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    print(
        f"\n== bq_jax sweep_labels vs a plain PyTorch eager plane loader (torch "
        f"{torch.__version__}, torch.set_num_threads({threads}); JAX/XLA:CPU uses the "
        f"{len(os.sched_getaffinity(0))} cores of this process; same weights, same points, timed "
        f"in the same rounds, best of {args.repeats}; ratio = torch s / bq_jax s)"
    )
    print(
        f"{'model':>5} {'R':>5} {'V':>3} {'chunk':>6} {'bq_jax s':>9} {'torch s':>8} "
        f"{'bq_jax pts*V/s':>14} {'torch pts*V/s':>13} {'ratio':>6} {'agree':>9} {'differ':>6} "
        f"{'max gap':>8}"
    )
    for name in args.torch_models:
        apply_fn, full, x = _digits_variants(name, args.train_steps, max(args.torch_variants))
        for v in args.torch_variants:
            stack = jax.tree.map(lambda l, v=v: l[:v], full)
            nets = [
                _torch_module(torch, name, jax.tree.map(lambda l, i=i: l[i], stack))
                for i in range(v)
            ]
            chunk = args.torch_chunk or S.default_chunk_size(64)
            for r in args.torch_resolutions:
                slc = G.pca_slice(x, resolution=r)
                jax_fn = functools.partial(G.sweep_labels, apply_fn, stack, slc)
                torch_fn = functools.partial(_torch_plane_labels, torch, nets, slc, chunk)
                ref, got = np.asarray(jax_fn()), torch_fn()
                diff = np.argwhere(ref != got)
                gap = "-"
                if len(diff):  # top-2 logit gap (bq_jax's float32 logits) where the labels differ
                    pts = np.asarray(slc.points())[diff[:, 1] * r + diff[:, 2]]
                    z = [
                        np.asarray(
                            apply_fn(jax.tree.map(lambda l, i=i: l[i], stack), pts[k : k + 1])
                        )
                        for k, i in enumerate(diff[:, 0])
                    ]
                    top2 = np.sort(np.concatenate(z), axis=-1)[:, -2:]
                    gap = f"{np.max(top2[:, 1] - top2[:, 0]):.1e}"
                times = _time_interleaved(
                    {"jax": jax_fn, "torch": torch_fn}, args.repeats, args.min_time
                )
                n = r * r * v
                tj, tt = times["jax"], times["torch"]
                print(
                    f"{name:>5} {r:>5} {v:>3} {chunk:>6} {tj:>9.3f} {tt:>8.3f} {n / tj:>14.3g} "
                    f"{n / tt:>13.3g} {tt / tj:>5.2f}x {1 - len(diff) / ref.size:>9.6f} "
                    f"{len(diff):>6} {gap:>8}"
                )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mlp", DEFAULT_MODELS["cifar10"], "cnn"])
    p.add_argument("--resolutions", nargs="+", type=int, default=[256, 512, 1024, 2048])
    p.add_argument("--variants", nargs="+", type=int, default=[1, 8, 64])
    p.add_argument("--modes", nargs="+", default=["map", "vmap"], choices=["map", "vmap"])
    p.add_argument(
        "--chunk-sizes",
        nargs="+",
        type=int,
        default=None,
        help="points per chunk (default: the engine's default_chunk_size)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timing rounds (best of)")
    p.add_argument(
        "--min-time",
        type=float,
        default=1.0,
        help="more rounds (up to 8x --repeats) until each ran this long (s)",
    )
    p.add_argument(
        "--max-gflop",
        type=float,
        default=150.0,
        help="skip configurations with more work per run (GFLOP)",
    )
    p.add_argument(
        "--max-loop-mib",
        type=float,
        default=3072.0,
        help="skip the whole-grid loop when its compiled memory is larger",
    )
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument(
        "--quick",
        action="store_true",
        help="repeats 2, max 40 GFLOP per run (minutes on 2 CPU cores)",
    )
    p.add_argument(
        "--device-scaling",
        action="store_true",
        help="(a) 1/2/4/8 forced host CPU devices (a subprocess; correctness and overhead)",
    )
    p.add_argument("--device-scaling-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scaling-devices", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--scaling-r", type=int, default=512)
    p.add_argument("--scaling-v", type=int, default=8)
    p.add_argument(
        "--adaptive", action="store_true", help="(b) adaptive vs dense label maps instead"
    )
    p.add_argument("--adaptive-models", nargs="+", default=["mlp", "cnn"])
    p.add_argument("--mlp-resolutions", nargs="+", type=int, default=[256, 1024, 4096])
    p.add_argument("--cnn-resolutions", nargs="+", type=int, default=[256, 1024])
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument(
        "--torch",
        action="store_true",
        help="(c) sweep_labels vs a plain PyTorch eager plane loader on the same weights instead "
        "(needs the bench extra: torch)",
    )
    p.add_argument("--torch-models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    p.add_argument("--torch-resolutions", nargs="+", type=int, default=[256, 512])
    p.add_argument("--torch-variants", nargs="+", type=int, default=[1, 8])
    p.add_argument(
        "--torch-threads", type=int, default=0, help="torch threads (default: this process' cores)"
    )
    p.add_argument(
        "--torch-chunk",
        type=int,
        default=0,
        help="torch points per chunk (default: bq_jax's default chunk for D = 64)",
    )
    args = p.parse_args()
    if args.device_scaling_worker:
        device_scaling_worker(args)
        return
    if args.device_scaling or args.adaptive or args.torch:
        print(f"backend {jax.default_backend()}, devices {jax.devices()}, jax {jax.__version__}")
        if args.device_scaling:
            device_scaling(args)
        if args.adaptive:
            args.adaptive_resolutions = {"mlp": args.mlp_resolutions, "cnn": args.cnn_resolutions}
            adaptive_vs_dense(args)
        if args.torch:
            torch_side_by_side(args)
        return
    for m in args.models:
        if m not in INPUT_SHAPES:
            p.error(f"unknown model {m!r}; known: {', '.join(INPUT_SHAPES)}")
    if args.quick:
        args.repeats = min(args.repeats, 2)
        args.max_gflop = min(args.max_gflop, 40.0)
    print(
        f"backend {jax.default_backend()}, devices {jax.devices()}, jax {jax.__version__}; "
        f"repeats {args.repeats} (best of), max {args.max_gflop:g} GFLOP per run"
    )
    peak = matmul_flops(args.matmul_size, max(5, args.repeats))
    print(
        f"square matmul {args.matmul_size}^2 float32: {peak / 1e9:.1f} GFLOP/s (used only to "
        "estimate skipped work; every group of runs below times the matmul in its own rounds)"
    )
    rows, skipped = [], []
    for name in args.models:
        bench_model(name, args, peak, rows, skipped)
    summary(rows, peak)
    if skipped:
        print("\n== skipped")
        for s in skipped:
            print("  " + s)


if __name__ == "__main__":
    main()
