"""The "PTQ leaves the basin, QAT returns" study on the digits MLP (``bq_jax.qat.basin``).

At 2, 3 and 4 bits: PTQ (round to nearest, AdaRound), STE-QAT, LSQ-QAT and the
float-gradient ablation; loss along the line from the float weights to each solution, excess
loss, displacement along the top Hessian eigen-directions, gradient / basin-direction cosines
along each QAT trajectory, boundary metrics and held-out accuracy. Writes OUT/results.json,
OUT/report.md and OUT/figures/*.png (keys documented in ``bq_jax.qat.basin``).

Command (from the repository root)::

    python experiments/qat_basin.py                      # full settings -> results/qat_basin
    python experiments/qat_basin.py --quick --out /tmp/qat_basin_quick   # smoke run
    python experiments/qat_basin.py --bits 2,3 --qat-epochs 20
    python experiments/qat_basin.py --range-method mse --out results/qat_basin/mse_range

Same as ``bq-jax basin``.
"""

from __future__ import annotations

import argparse
import sys

from bq_jax.qat.basin import basin_config, run_basin_study


def _bits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integer bit widths, got {text!r}"
        ) from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke settings")
    parser.add_argument("--out", default=None, help="output directory (default: results/qat_basin)")
    parser.add_argument("--seed", type=int, default=0, help="float classifier and QAT seed")
    parser.add_argument("--bits", type=_bits, default=None, help="e.g. 2,3,4 (default: 2,3,4)")
    parser.add_argument("--qat-epochs", type=int, default=None, help="QAT epochs (default: 30)")
    parser.add_argument(
        "--adaround-iterations", type=int, default=None, help="AdaRound steps (default: 2000)"
    )
    parser.add_argument(
        "--range-method",
        default=None,
        help="weight range method of every solution: minmax, percentile, mse, octav or "
        "gaussian (default: minmax)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    overrides = {"seed": args.seed}
    if args.bits is not None:
        overrides["bits"] = args.bits
    if args.qat_epochs is not None:
        overrides["qat_epochs"] = args.qat_epochs
    if args.range_method is not None:
        overrides["range_method"] = args.range_method
    if args.adaround_iterations is not None:
        overrides["adaround_iterations"] = args.adaround_iterations
    try:
        config = basin_config(quick=args.quick, **overrides)
    except ValueError as e:
        parser.error(str(e))
    out = args.out or ("results/qat_basin-quick" if args.quick else "results/qat_basin")
    res = run_basin_study(config, out_dir=out, progress=not args.no_progress)
    for f in res["findings"]:
        print(f"[{'holds' if f['holds'] else 'does not hold'}] {f['finding']}: {f['evidence']}")
    print(f"wrote {out}/results.json, {out}/report.md ({res['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
