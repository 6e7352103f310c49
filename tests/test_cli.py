"""The `bq-jax` command line: help text, argument errors, exit statuses, resumability.

End-to-end runs use `--quick` on digits (bundled with scikit-learn, no download).
"""

import json
import os
import subprocess
import sys

import pytest

from bq_jax import cli

COMMANDS = [
    "reproduce",
    "bits-sweep",
    "interpolation",
    "stopping",
    "rounding",
    "correlation",
    "qat-basin",
    "range-methods",
    "rounding-comparison",
    "sensitivity",
    "train",
]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for c in COMMANDS:
        assert c in text


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "DATASET" in text and "--out" in text and "--seeds" in text
    assert len(text.splitlines()) > 10


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["reproduce", "imagenet"], "unknown data set 'imagenet'"),
        (["bits-sweep", "digits", "--min-bits", "1"], "--min-bits"),
        (["bits-sweep", "digits", "--max-bits", "33"], "--max-bits"),
        (["rounding", "digits", "--rounding-bits", "4,0"], "--rounding-bits"),
        (["stopping", "digits", "--jaccard-threshold", "1.5"], "--jaccard-threshold"),
        (["reproduce", "digits", "--seeds", "-1"], "--seeds"),
        (["reproduce", "digits", "--seeds", "0,0"], "seeds must be distinct"),
        (["qat-basin", "digits", "--bits", "1"], "--bits"),
        (["reproduce", "digits", "--boundary-gap-weight", "-1"], "--boundary-gap-weight"),
        (["reproduce", "digits", "--resolution", "x"], "--resolution"),
        (["reproduce"], "DATASET"),
        (["no-such-command"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_one_line_nonzero(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own errors (unknown command, unparsable value)
        code = e.code
    assert code == cli.EXIT_USAGE
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, captured.err
    assert needle in err[0]
    assert "Traceback" not in captured.err


def test_min_bits_not_below_max_bits(capsys, tmp_path):
    code = cli.main(
        ["bits-sweep", "digits", "--min-bits", "6", "--max-bits", "6", "--out", str(tmp_path)]
    )
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_bits must exceed min_bits" in err[0]


def test_unwritable_out_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = cli.main(["reproduce", "digits", "--quick", "--out", str(blocker / "sub")])
    assert code == cli.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out is not a writable directory" in err[0]


def test_console_script_bad_dataset_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "bq_jax.cli", "reproduce", "svhn"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == cli.EXIT_USAGE
    assert proc.stderr.strip().splitlines() == [
        "bq-jax reproduce: error: argument DATASET: unknown data set 'svhn'; choose one of "
        "digits, mnist, fashion_mnist, cifar10, mnist5k"
    ]
    assert proc.stdout == ""


def _quick(tmp_path, *extra):
    out = tmp_path / "out"
    argv = ["bits-sweep", "digits", "--quick", "--no-progress", "--out", str(out), *extra]
    return out, argv


def test_keyboard_interrupt_exits_130_and_keeps_valid_parts(tmp_path, capsys, monkeypatch):
    from bq_jax.studies import registry

    calls = {"n": 0}
    original = registry.STUDIES["interpolation"].compute

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(registry.STUDIES["interpolation"], "compute", interrupted)
    out = tmp_path / "out"
    code = cli.main(
        ["reproduce", "digits", "--quick", "--no-progress", "--out", str(out), "--resolution", "16"]
    )
    assert code == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0] and str(out) in err[0]
    assert calls["n"] == 1
    parts = sorted(p.name for p in (out / "parts").iterdir() if not p.name.startswith("."))
    assert "bits_sweep_seed0.json" in parts
    assert "interpolation_seed0.json" not in parts
    for name in parts:
        if name.endswith(".json"):
            json.loads((out / "parts" / name).read_text())
    assert not (out / "results.json").exists()
    # The re-run resumes: the bits sweep part is reused, the rest computed.
    monkeypatch.setattr(registry.STUDIES["interpolation"], "compute", original)
    code = cli.main(
        ["reproduce", "digits", "--quick", "--no-progress", "--out", str(out), "--resolution", "16"]
    )
    assert code == cli.EXIT_OK
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "4 parts computed, 1 reused" in line
    assert os.path.exists(out / "results.json")


_XLA_CACHE_PROGRAM = """
import jax, jax.numpy as jnp
from bq_jax import cli
cli._enable_compilation_cache()
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0) * 3.0 + jnp.arange(64.0))
print(repr(float(f(jnp.linspace(0, 1, 64 * 32).reshape(64, 32)).sum())))
"""


@pytest.mark.slow  # two fresh processes that compile (~25 s); checks JAX's own cache checksum
def test_corrupted_xla_compilation_cache_entries_are_detected_and_recompiled(tmp_path):
    """The CLI's persistent XLA cache (``$BQ_JAX_CACHE/xla``, written by JAX): entries with a
    flipped byte or truncated fail JAX's zlib checksum, are reported as a warning and
    recompiled; the result is the same (two fresh processes, ~15 s)."""
    env = {
        **{k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"},
        "BQ_JAX_CACHE": str(tmp_path),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }

    def run():
        proc = subprocess.run(
            [sys.executable, "-c", _XLA_CACHE_PROGRAM],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, proc.stderr

    first, _ = run()
    entries = sorted((tmp_path / "xla").iterdir())
    assert entries
    for i, entry in enumerate(entries):
        data = bytearray(entry.read_bytes())
        if i % 2:
            data = data[: len(data) // 2]
        else:
            data[len(data) // 2] ^= 0x10
        entry.write_bytes(bytes(data))
    again, stderr = run()
    assert again == first
    assert "Error reading persistent compilation cache entry" in stderr
