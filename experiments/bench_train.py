"""Training throughput per model, and the digits MLP's default training (time, accuracy, seeds).

Part 1, throughput: for each model (``mlp`` on digits-shaped inputs (64,), ``cnn`` on
MNIST-shaped inputs (28, 28, 1), ``resnet`` on CIFAR-10-shaped inputs (32, 32, 3)) the
library's training step (``make_train_step`` with the data set's ``default_train_config``:
optimizer, batch size, augmentation) is compiled ahead of time and then run on synthetic
data of the right shapes (standard-normal inputs, uniform labels; the speed of a step does
not depend on the values). Prints compile time, step time and examples/s (best of
``--repeats`` timed windows of ``--steps`` steps).

Part 2, digits: ``train_with_history`` with ``default_train_config("digits")`` on the real
digits data (``load_dataset("digits", seed=seed)``, as ``trained_classifier`` does) for each
seed: wall and CPU time of the whole call (the first seed includes compiling the step; later
seeds reuse it), held-out accuracy, and whether a second training with the same seed
gives bitwise identical variables while different seeds give different ones.

Command (about a minute on 2 CPU cores shared with other jobs)::

    python experiments/bench_train.py [--models mlp cnn resnet] [--steps 20] [--repeats 3]
        [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from bq_jax.data import load_dataset
from bq_jax.models import make_model
from bq_jax.train import (
    accuracy,
    default_train_config,
    make_optimizer,
    make_train_step,
    train_with_history,
)

# model -> (data set whose default training settings it uses, input shape)
SETUPS = {
    "mlp": ("digits", (64,)),
    "cnn": ("mnist", (28, 28, 1)),
    "resnet": ("cifar10", (32, 32, 3)),
}


def throughput(name: str, steps: int, repeats: int) -> dict:
    dataset, shape = SETUPS[name]
    config = default_train_config(dataset)
    b = config.batch_size
    model = make_model(name, num_classes=10, input_shape=shape)
    tx = make_optimizer(config, steps_per_epoch=100)
    init_state, step_fn = make_train_step(model, config, tx)
    state = init_state(model.init(jax.random.key(0)), jax.random.key(1))
    rng = np.random.default_rng(0)
    batches = [
        (
            rng.standard_normal((b, *shape), dtype=np.float32),
            rng.integers(0, 10, size=b).astype(np.int32),
        )
        for _ in range(4)
    ]
    t0 = time.perf_counter()
    step = jax.jit(step_fn).lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    state, m = step(state, batches[0])
    jax.block_until_ready(m)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            state, m = step(state, batches[i % len(batches)])
        jax.block_until_ready((state, m))
        best = min(best, time.perf_counter() - t0)
    return dict(
        model=name,
        dataset=dataset,
        batch=b,
        augment=config.augment,
        compile_s=compile_s,
        step_ms=1e3 * best / steps,
        examples_per_s=steps * b / best,
    )


def digits_runs(seeds):
    config = default_train_config("digits")
    model = make_model("mlp", num_classes=10, input_shape=(64,))
    out = []
    first = {}
    for seed in seeds:
        data = load_dataset("digits", seed=seed, progress=False)
        w0, c0 = time.perf_counter(), time.process_time()
        variables, history = train_with_history(
            model, data, config, jax.random.key(seed), progress=False
        )
        jax.block_until_ready(variables)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        acc = accuracy(model.apply_fn, variables, data.x_heldout, data.y_heldout)
        first[seed] = variables
        out.append(
            dict(
                seed=seed,
                wall_s=wall,
                cpu_s=cpu,
                heldout_accuracy=acc,
                n_heldout=len(data.y_heldout),
            )
        )
    return out, first, model, config


def same_tree(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows (best of)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="5 steps x 2 windows, seed 0 only")
    args = p.parse_args()
    if args.quick:
        args.steps, args.repeats, args.seeds = 5, 2, [0]
    print(f"backend {jax.default_backend()}, jax {jax.__version__}")
    print("\n== training throughput (synthetic data of the data set's shape, default settings)")
    print(
        f"{'model':>7} {'settings':>9} {'batch':>5} {'augment':>7} {'compile s':>9} "
        f"{'step ms':>8} {'examples/s':>10}"
    )
    for name in args.models:
        r = throughput(name, args.steps, args.repeats)
        print(
            f"{name:>7} {r['dataset']:>9} {r['batch']:>5} {r['augment']!s:>7} "
            f"{r['compile_s']:>9.2f} {r['step_ms']:>8.2f} {r['examples_per_s']:>10.0f}",
            flush=True,
        )

    config = default_train_config("digits")
    print(
        f"\n== digits MLP, default training ({config.epochs} epochs, batch {config.batch_size}, "
        f"{config.optimizer}, lr {config.learning_rate:g}, {config.schedule})"
    )
    runs, variables, model, config = digits_runs(args.seeds)
    for r in runs:
        print(
            f"  seed {r['seed']}: wall {r['wall_s']:.2f} s, CPU {r['cpu_s']:.2f} s, held-out "
            f"accuracy {r['heldout_accuracy']:.4f} ({r['n_heldout']} examples)"
        )
    ok_acc = all(r["heldout_accuracy"] >= 0.96 for r in runs)
    ok_cpu = all(r["cpu_s"] < 60.0 for r in runs)
    print(f"  every seed >= 0.96 held-out accuracy: {ok_acc}; every seed < 60 s CPU: {ok_cpu}")
    seed = args.seeds[0]
    data = load_dataset("digits", seed=seed, progress=False)
    again, _ = train_with_history(model, data, config, jax.random.key(seed), progress=False)
    print(
        f"  seed {seed} trained twice gives identical variables: "
        f"{same_tree(again, variables[seed])}"
    )
    if len(args.seeds) > 1:
        distinct = not any(
            same_tree(variables[a], variables[b]) for a in args.seeds for b in args.seeds if a < b
        )
        print(f"  different seeds give different variables: {distinct}")


if __name__ == "__main__":
    main()
