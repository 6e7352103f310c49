"""Range setting on Gaussian data: OCTAV, analytic Gaussian c_B, MSE search and min-max.

Quantizes 1e6 N(0, 1) samples (``jax.random.normal(jax.random.key(seed))``) with the signed
symmetric integer grid (codes ``[-2^(B-1), 2^(B-1) - 1]``, scale = clip / (2^(B-1) - 1)) for
B = 2..8 and prints, per bit width, the clip of each range method in units of the sample std
and the SQNR (dB) that the real quantizer reaches with it:

* OCTAV: fixed point of ``s <- E[|X| 1{|X|>=s}] / ((4^-B/3) E[1{|X|<s}] + E[1{|X|>=s}])``,
  with the population value for N(0, 1) beside it;
* Gaussian: ``c_B`` minimising the expected MSE of the actual grid (numerical integration),
  with the expected SQNR beside the measured one;
* MSE search over 200 clip ratios of max|x|; min-max.

A second table gives ``c_B`` for the narrow grid ``[-(2^(B-1)-1), 2^(B-1)-1]`` and the
minimiser of OCTAV's own model ``J(s)``, which explain where the textbook numbers
(int4 MSE-optimal clip ~2.5 sigma at ~18.9 dB; OCTAV 1.74 sigma at 2 bits) come from.

Command (about 20 s on 2 idle CPU cores, 15 s of CPU time, most of it compilation)::

    python experiments/range_setting.py [--num-samples 1000000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
from scipy import optimize, special

from bq_jax import quant

BITS = tuple(range(2, 9))
MSE_CANDIDATES = 200


def octav_population(bits: int) -> float:
    """OCTAV fixed point for N(0, 1): ``s = 2 phi(s) / (a (1 - 2Q(s)) + 2Q(s))``, a = 4^-B/3."""
    a = 4.0**-bits / 3.0
    s = 1.0
    for _ in range(500):
        q = special.ndtr(-s)
        s = 2.0 * math.exp(-0.5 * s * s) / math.sqrt(2 * math.pi) / (a * (1 - 2 * q) + 2 * q)
    return float(s)


def octav_model_minimiser(bits: int) -> float:
    """Minimiser of OCTAV's ``J(s) = (4^-B/3) s^2 P(|X|<s) + E[(|X|-s)^2 1{|X|>=s}]``, N(0,1)."""
    a = 4.0**-bits / 3.0

    def j(s):
        q = special.ndtr(-s)
        phi = math.exp(-0.5 * s * s) / math.sqrt(2 * math.pi)
        return a * s * s * (1 - 2 * q) + 2 * ((1 + s * s) * q - s * phi)

    return float(optimize.minimize_scalar(j, bounds=(0.1, 8.0), method="bounded").x)


def _db(mse: float) -> float:
    """SQNR in dB of an expected MSE for unit-variance data."""
    return -10.0 * math.log10(mse)


def measure(x: jax.Array, config: quant.QuantConfig) -> tuple[float, float]:
    """(clip in units of the sample std, SQNR in dB) of ``config`` on ``x``."""
    qp = quant.compute_qparams(x, config)
    xq = quant.fake_quant(x, config, qparams=qp)
    clip = float(qp.scale) * qp.qmax / float(jnp.std(x))
    return clip, float(quant.sqnr_db(x, xq))


def run(num_samples: int = 1_000_000, seed: int = 0) -> list[dict]:
    """One row per bit width (keys named after the columns printed by :func:`main`)."""
    x = jax.random.normal(jax.random.key(seed), (num_samples,), jnp.float32)
    rows = []
    for bits in BITS:
        cfg = dict(bits=bits, symmetric=True)
        _, n_iter = quant.octav_fixed_point(x, bits=bits)
        octav_clip, octav_sqnr = measure(x, quant.QuantConfig(**cfg, range_method="octav"))
        c_b = quant.gaussian_clip_ratio(bits)
        _, gauss_sqnr = measure(x, quant.QuantConfig(**cfg, range_method="gaussian"))
        mse_clip, mse_sqnr = measure(
            x, quant.QuantConfig(**cfg, range_method="mse", mse_candidates=MSE_CANDIDATES)
        )
        _, minmax_sqnr = measure(x, quant.QuantConfig(**cfg, range_method="minmax"))
        c_narrow = quant.gaussian_clip_ratio(bits, narrow=True)
        rows.append(
            {
                "bits": bits,
                "octav_clip": octav_clip,
                "octav_clip_population": octav_population(bits),
                "octav_iterations": int(n_iter),
                "octav_sqnr_db": octav_sqnr,
                "gaussian_c_b": c_b,
                "gaussian_sqnr_db": gauss_sqnr,
                "gaussian_expected_sqnr_db": _db(quant.gaussian_expected_mse(c_b, bits)),
                "mse_clip": mse_clip,
                "mse_sqnr_db": mse_sqnr,
                "minmax_sqnr_db": minmax_sqnr,
                "narrow_c_b": c_narrow,
                "narrow_expected_sqnr_db": _db(
                    quant.gaussian_expected_mse(c_narrow, bits, narrow=True)
                ),
                "octav_model_minimiser": octav_model_minimiser(bits),
            }
        )
    return rows


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = run(args.num_samples, args.seed)
    print(
        f"N(0, 1), {args.num_samples} samples (key {args.seed}); signed symmetric int grid; "
        "clips in units of the sample std; SQNR in dB measured with the real quantizer.\n"
    )
    print(
        _table(
            [
                "bits",
                "OCTAV clip (pop.)",
                "iters",
                "OCTAV SQNR",
                "c_B",
                "Gaussian SQNR (expected)",
                f"MSE clip (n={MSE_CANDIDATES})",
                "MSE SQNR",
                "min-max SQNR",
            ],
            [
                [
                    str(r["bits"]),
                    f"{r['octav_clip']:.4f} ({r['octav_clip_population']:.4f})",
                    str(r["octav_iterations"]),
                    f"{r['octav_sqnr_db']:.3f}",
                    f"{r['gaussian_c_b']:.4f}",
                    f"{r['gaussian_sqnr_db']:.3f} ({r['gaussian_expected_sqnr_db']:.3f})",
                    f"{r['mse_clip']:.4f}",
                    f"{r['mse_sqnr_db']:.3f}",
                    f"{r['minmax_sqnr_db']:.3f}",
                ]
                for r in rows
            ],
        )
    )
    print("\nNarrow grid [-(2^(B-1)-1), 2^(B-1)-1] (analytic) and the minimiser of OCTAV's J(s):\n")
    print(
        _table(
            ["bits", "narrow c_B", "narrow expected SQNR", "argmin J (OCTAV model)"],
            [
                [
                    str(r["bits"]),
                    f"{r['narrow_c_b']:.4f}",
                    f"{r['narrow_expected_sqnr_db']:.3f}",
                    f"{r['octav_model_minimiser']:.4f}",
                ]
                for r in rows
            ],
        )
    )
    print(f"\n({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
