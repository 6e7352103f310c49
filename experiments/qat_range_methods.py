"""Statistical quantizers in QAT on the digits MLP (``bq_jax.qat.range_methods``).

STE-QAT with min-max, MSE, OCTAV-style and analytic Gaussian weight ranges (re-estimated every
step) at 2, 3 and 4 bits over 3 QAT seeds: held-out accuracy, loss-curve spread over seeds and
per-layer SQNR. Writes OUT/results.json, OUT/report.md and OUT/figures/*.png.

Command (from the repository root)::

    python experiments/qat_range_methods.py              # full -> results/qat_range_methods
    python experiments/qat_range_methods.py --quick --out /tmp/qat_range_quick   # smoke run
"""

from __future__ import annotations

import argparse
import sys

from bq_jax.qat.range_methods import range_method_study_config, run_range_method_study


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
    parser.add_argument(
        "--out", default=None, help="output directory (default: results/qat_range_methods)"
    )
    parser.add_argument("--seed", type=int, default=0, help="float classifier seed")
    parser.add_argument("--seeds", type=int, default=None, help="QAT seeds (default: 3)")
    parser.add_argument("--bits", type=_bits, default=None, help="e.g. 2,3,4 (default: 2,3,4)")
    parser.add_argument("--qat-epochs", type=int, default=None, help="QAT epochs (default: 30)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    overrides = {"seed": args.seed}
    if args.seeds is not None:
        overrides["num_seeds"] = args.seeds
    if args.bits is not None:
        overrides["bits"] = args.bits
    if args.qat_epochs is not None:
        overrides["qat_epochs"] = args.qat_epochs
    try:
        config = range_method_study_config(quick=args.quick, **overrides)
    except ValueError as e:
        parser.error(str(e))
    out = args.out or (
        "results/qat_range_methods-quick" if args.quick else "results/qat_range_methods"
    )
    res = run_range_method_study(config, out_dir=out, progress=not args.no_progress)
    for r in res["rows"]:
        print(
            f"{r['bits']}-bit {r['range_method']:>8}: PTQ {r['ptq_accuracy']:.4f}, "
            f"QAT {r['accuracy_mean']:.4f} +- {r['accuracy_std']:.4f}, "
            f"loss-curve spread {r['loss_curve_spread']:.2e}, "
            f"SQNR {r['sqnr_init_mean_db']:.2f} -> {r['sqnr_final_mean_db']:.2f} dB"
        )
    print(f"wrote {out}/results.json, {out}/report.md ({res['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
