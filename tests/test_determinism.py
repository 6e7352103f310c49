"""Determinism of every study command: the same seed gives byte-identical results.json and
figures (every PNG) across two fresh processes.

The quick digits reproduction (bits sweep, interpolation, stopping, rounding, correlation) is
checked in tests/test_output_dir.py. Here, on their ``--quick`` settings with digits:

``range-methods`` (two processes, 60 s measured on 2 shared cores), ``qat-basin`` (48 s) and
``rounding-comparison`` (shrunk further with ``--rounding-iters 20 --check-bits 2``; 121 s) and
``sensitivity`` (``--resolution 16 --num-slices 2``; 77 s). All four are marked slow to keep
CI within its time budget: the normal suite checks determinism on the quick digits reproduction
(tests/test_output_dir.py and tests/test_studies_e2e.py), which goes through the same runner,
results writer and figure writer.
"""

import os
import subprocess
import sys

import pytest

from bq_jax import cli

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

STUDIES = [
    pytest.param("range-methods", (), id="range-methods", marks=pytest.mark.slow),
    pytest.param("qat-basin", (), id="qat-basin", marks=pytest.mark.slow),
    pytest.param(
        "rounding-comparison",
        ("--rounding-iters", "20", "--check-bits", "2"),
        id="rounding-comparison",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "sensitivity",
        ("--resolution", "16", "--num-slices", "2"),
        id="sensitivity",
        marks=pytest.mark.slow,
    ),
]


def _run(command, extra, out):
    proc = subprocess.run(
        [sys.executable, "-m", "bq_jax.cli", command, "digits", "--quick", "--no-progress"]
        + [*extra, "--out", str(out)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )
    assert proc.returncode == cli.EXIT_OK, proc.stderr


@pytest.mark.parametrize(("command", "extra"), STUDIES)
def test_same_seed_two_fresh_processes_byte_identical_results_and_figures(command, extra, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    _run(command, extra, first)
    _run(command, extra, second)
    assert (second / "results.json").read_bytes() == (first / "results.json").read_bytes()
    figures = sorted(os.listdir(first / "figures"))
    assert any(name.endswith(".png") for name in figures), figures
    assert sorted(os.listdir(second / "figures")) == figures
    for name in figures:
        a = (first / "figures" / name).read_bytes()
        assert (second / "figures" / name).read_bytes() == a, name
