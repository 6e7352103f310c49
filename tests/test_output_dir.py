"""The output directory under faults: a lock against concurrent runs, corrupted or edited parts
recomputed (never reused), a broken directory layout as one line and exit 1, runs killed at random
points (SIGKILL / SIGINT) that resume to the byte-identical results.json, and the same seed giving
byte-identical results.json and figures across two fresh processes.

One uninterrupted quick digits run is shared (module fixture); the other runs copy it.
"""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bq_jax import cli

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _argv(out, *extra):
    return ["reproduce", "digits", "--quick", "--no-progress", "--out", str(out), *extra]


def _spawn(out):
    return subprocess.Popen(
        [sys.executable, "-m", "bq_jax.cli", *_argv(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def _run_process(out):
    proc = _spawn(out)
    stdout, stderr = proc.communicate(timeout=600)
    return proc.returncode, stdout, stderr


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "digits"
    code, _, stderr = _run_process(out)
    assert code == cli.EXIT_OK, stderr
    return out


def _copy(quick_run, tmp_path, name):
    out = tmp_path / name
    shutil.copytree(quick_run, out)
    return out


def _one_line_failure(capsys, argv, needle):
    capsys.readouterr()
    assert cli.main(argv) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert "Traceback" not in captured.err


# ----------------------------------------------------------------------------- the lock


def test_second_run_on_one_out_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "locked"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from bq_jax.studies.runner import lock_output\n"
            f"with lock_output({str(out)!r}):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        _one_line_failure(capsys, _argv(out), f"another bq-jax run (pid {holder.pid})")
        assert not (out / "parts").exists()  # refused before writing anything
    finally:
        holder.kill()
        holder.communicate()
    # The lock dies with its holder (even on SIGKILL): the directory is usable again.
    from bq_jax.studies.runner import lock_output

    with lock_output(str(out)):
        assert (out / ".lock").read_text().strip() == str(os.getpid())


# ----------------------------------------------------------------------------- corruption


def _parts_line(capsys):
    return capsys.readouterr().out


# Each case re-runs the quick study (~10-20 s on 2 cores): CI runs one damaged array file, one
# damaged part file and one edited result; the two remaining cases run with the slow tests.
@pytest.mark.parametrize(
    "damage",
    [
        "truncated_npz",
        pytest.param("garbage_npz", marks=pytest.mark.slow),
        "null_json",
        pytest.param("truncated_json", marks=pytest.mark.slow),
        "edited_result",
    ],
)
def test_damaged_part_is_recomputed_not_reused(quick_run, tmp_path, capsys, damage):
    out = _copy(quick_run, tmp_path, damage)
    parts = out / "parts"
    if damage == "truncated_npz":
        data = (parts / "bits_sweep_seed0.npz").read_bytes()
        (parts / "bits_sweep_seed0.npz").write_bytes(data[: len(data) // 2])
    elif damage == "garbage_npz":
        (parts / "bits_sweep_seed0.npz").write_bytes(b"PK\x03\x04 not a zip")
    elif damage == "null_json":
        (parts / "rounding_seed0.json").write_text("null")
    elif damage == "truncated_json":
        text = (parts / "rounding_seed0.json").read_text()
        (parts / "rounding_seed0.json").write_text(text[: len(text) // 2])
    else:
        part = json.loads((parts / "rounding_seed0.json").read_text())
        part["result"]["rows"][0]["accuracy"] = 0.123
        (parts / "rounding_seed0.json").write_text(json.dumps(part))
    capsys.readouterr()
    assert cli.main(_argv(out)) == cli.EXIT_OK
    line = _parts_line(capsys)
    # bits_sweep feeds later studies, but its recomputed result is the same: only it reruns.
    assert "1 parts computed, 4 reused" in line, line
    assert (out / "results.json").read_bytes() == (quick_run / "results.json").read_bytes()


def test_parts_path_that_is_a_file_is_one_line_exit_1(quick_run, tmp_path, capsys):
    out = tmp_path / "parts-file"
    out.mkdir()
    (out / "parts").write_text("not a directory")
    _one_line_failure(capsys, _argv(out), "parts")


def test_results_json_that_is_a_directory_is_one_line_exit_1(quick_run, tmp_path, capsys):
    out = _copy(quick_run, tmp_path, "results-dir")
    os.remove(out / "results.json")
    (out / "results.json").mkdir()
    _one_line_failure(capsys, _argv(out), "results.json")


# ----------------------------------------------------------------------------- a full disk


def _disk_full_on(monkeypatch, marker):
    """Every file opened with os.fdopen (the atomic writers of bq_jax.report and bq_jax.train)
    whose name contains ``marker`` gets half its first write, then ENOSPC: a disk that fills up
    in the middle of that file."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name the file behind a descriptor")
    real = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(bytes(data)[: len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        return Full(f) if marker in os.readlink(f"/proc/self/fd/{fd}") else f

    monkeypatch.setattr(os, "fdopen", fdopen)


def _no_half_written_files(out):
    for root, _, files in os.walk(out):
        for name in files:
            assert not name.endswith(".tmp"), os.path.join(root, name)
            assert not name.startswith(".") or name == ".lock", os.path.join(root, name)
            if name.endswith(".json"):
                with open(os.path.join(root, name)) as f:
                    json.load(f)  # complete


@pytest.mark.parametrize("where", ["part", "results.json", "figure", "checkpoint"])
def test_full_disk_mid_run_is_one_line_exit_1_nothing_half_written(
    quick_run, tmp_path, capsys, monkeypatch, where
):
    out = _copy(quick_run, tmp_path, f"full-{where}")
    parts_before = {p.name: p.read_bytes() for p in (quick_run / "parts").iterdir()}
    if where == "part":
        os.remove(out / "parts" / "rounding_seed0.json")  # recomputed, then its write fails
        del parts_before["rounding_seed0.json"]
        _disk_full_on(monkeypatch, ".rounding_seed0.json.")
    elif where == "results.json":
        os.remove(out / "results.json")
        _disk_full_on(monkeypatch, ".results.json.")
    elif where == "figure":
        _disk_full_on(monkeypatch, ".png.")
    else:
        shutil.rmtree(out / "checkpoints")  # retrained (first thing), then its write fails
        shutil.rmtree(out / "parts")
        parts_before = {}
        _disk_full_on(monkeypatch, ".ckpt.")
    _one_line_failure(capsys, _argv(out), "No space left on device")
    _no_half_written_files(out)
    parts = (out / "parts").iterdir() if (out / "parts").exists() else []
    assert {p.name: p.read_bytes() for p in parts} == parts_before
    if where == "results.json":
        assert not (out / "results.json").exists()
    else:  # the previous complete one (or, after the part, rewritten identically)
        assert (out / "results.json").read_bytes() == (quick_run / "results.json").read_bytes()
    for png in (out / "figures").iterdir():
        assert png.read_bytes() == (quick_run / "figures" / png.name).read_bytes(), png.name
    if where == "checkpoint":
        assert not any((out / "checkpoints").iterdir())


# ----------------------------------------------------------------------------- interruption


def _kill_and_resume(quick_run, out, kills, seed):
    """Starts the quick run ``kills`` times, killing each at a random point; then finishes it."""
    rng = random.Random(seed)
    # Training (the first part) is cached in OUT/checkpoints: start from the trained model so
    # that the kills land in the studies, not in the training of the classifier.
    shutil.copytree(quick_run / "checkpoints", out / "checkpoints")
    for k in range(kills):
        proc = _spawn(out)
        time.sleep(rng.uniform(3.0, 20.0))
        proc.send_signal(rng.choice([signal.SIGKILL, signal.SIGINT]) if k else signal.SIGKILL)
        proc.communicate(timeout=600)
        for name in os.listdir(out / "parts") if (out / "parts").exists() else []:
            if name.endswith(".json"):  # what a kill leaves is complete or absent
                json.loads((out / "parts" / name).read_text())
    code, _, stderr = _run_process(out)
    assert code == cli.EXIT_OK, stderr
    assert (out / "results.json").read_bytes() == (quick_run / "results.json").read_bytes()


def test_killed_runs_resume_to_identical_results(quick_run, tmp_path):
    _kill_and_resume(quick_run, tmp_path / "killed", kills=2, seed=0)


@pytest.mark.slow
def test_five_random_kills_resume_to_identical_results(quick_run, tmp_path):
    _kill_and_resume(quick_run, tmp_path / "killed5", kills=5, seed=1)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_two_fresh_processes_byte_identical_results_and_figures(quick_run, tmp_path):
    out = tmp_path / "again"
    code, _, stderr = _run_process(out)
    assert code == cli.EXIT_OK, stderr
    assert (out / "results.json").read_bytes() == (quick_run / "results.json").read_bytes()
    figures = sorted(os.listdir(quick_run / "figures"))
    assert figures and sorted(os.listdir(out / "figures")) == figures
    for name in figures:
        a = (quick_run / "figures" / name).read_bytes()
        assert (out / "figures" / name).read_bytes() == a, name


@pytest.mark.parametrize(
    "damage", [pytest.param("truncated", marks=pytest.mark.slow), "flipped_byte"]
)
def test_damaged_checkpoint_is_retrained_not_reused(quick_run, tmp_path, capsys, damage):
    out = _copy(quick_run, tmp_path, f"ckpt-{damage}")
    (ckpt,) = (out / "checkpoints").iterdir()
    data = bytearray(ckpt.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) - 100] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    for name in os.listdir(out / "parts"):  # force the studies to need the classifier
        os.remove(out / "parts" / name)
    with pytest.warns(UserWarning, match="retraining"):
        assert cli.main(_argv(out)) == cli.EXIT_OK
    from bq_jax import train

    train.load_checkpoint(str(ckpt))  # replaced by a valid one (it records timings: not bytes)
    assert (out / "results.json").read_bytes() == (quick_run / "results.json").read_bytes()
