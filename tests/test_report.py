"""Tests of bq_jax.report: atomic deterministic JSON/text/PNG writing, Markdown, figures."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import threading

import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import geometry, report, stats
from bq_jax.report import figures as figmod
from bq_jax.report import io as iomod

# ---------------------------------------------------------------------------- JSON


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Cfg:
    bits: int
    method: str


def test_json_round_trip_numpy_and_jax_types(tmp_path):
    obj = {
        "i32": np.int32(-7),
        "u8": np.uint8(200),
        "f32": np.float32(0.1),
        "f64": np.float64(1 / 3),
        "b": np.bool_(True),
        "py": [1, 2.5, None, True, "x"],
        "tuple": (12, 34, 17),
        "labels": np.array([[0, 1], [2, 3]], dtype=np.int32),
        "f32_array": np.array([0.1, 0.25, -3.0], dtype=np.float32),
        "f64_array": np.array([[0.5], [1e-300]]),
        "bool_array": np.array([True, False]),
        "scalar_0d": np.array(4),
        "jax_int": jnp.arange(3, dtype=jnp.int32),
        "jax_f32": jnp.asarray([0.1, 0.7], dtype=jnp.float32),
        "jax_bf16": jnp.asarray([0.1, 2.0], dtype=jnp.bfloat16),
        "jax_scalar": jnp.float32(0.3),
        "int_keys": {8: {"boundary_jaccard_distance": 0.428}, 4: {"accuracy": 0.9733}},
        "config": _Cfg(bits=4, method="nearest"),
        "path": pathlib.Path("/a/b.png"),
        "unicode": "boundary — Jaccard",
    }
    path = tmp_path / "results.json"
    report.write_json(path, obj)
    back = report.read_json(path)
    assert back == {
        "i32": -7,
        "u8": 200,
        "f32": 0.1,
        "f64": 1 / 3,
        "b": True,
        "py": [1, 2.5, None, True, "x"],
        "tuple": [12, 34, 17],
        "labels": [[0, 1], [2, 3]],
        "f32_array": [0.1, 0.25, -3.0],
        "f64_array": [[0.5], [1e-300]],
        "bool_array": [True, False],
        "scalar_0d": 4,
        "jax_int": [0, 1, 2],
        "jax_f32": [0.1, 0.7],
        "jax_bf16": [0.1, 2.0],
        "jax_scalar": 0.3,
        "int_keys": {"8": {"boundary_jaccard_distance": 0.428}, "4": {"accuracy": 0.9733}},
        "config": {"bits": 4, "method": "nearest"},
        "path": "/a/b.png",
        "unicode": "boundary — Jaccard",
    }
    # Types are plain Python types, and low-precision floats round-trip in their own dtype.
    assert type(back["i32"]) is int and type(back["f32"]) is float and type(back["b"]) is bool
    assert np.float32(back["f32"]) == np.float32(0.1)
    np.testing.assert_array_equal(
        np.asarray(back["jax_bf16"], dtype=jnp.bfloat16), np.asarray(obj["jax_bf16"])
    )


def test_json_golden_text_and_byte_identical(tmp_path):
    a = {"b": [1, np.float32(0.5)], "a": {"z": None, "y": np.int64(3)}, 10: "ten"}
    b = {10: "ten", "a": {"y": 3, "z": None}, "b": [1, 0.5]}  # same content, other order/types
    assert report.json_dumps(a) == (
        '{\n  "10": "ten",\n  "a": {\n    "y": 3,\n    "z": null\n  },\n'
        '  "b": [\n    1,\n    0.5\n  ]\n}\n'
    )
    report.write_json(tmp_path / "a.json", a)
    report.write_json(tmp_path / "b.json", b)
    report.write_json(tmp_path / "a2.json", a)
    data = (tmp_path / "a.json").read_bytes()
    assert data == (tmp_path / "b.json").read_bytes() == (tmp_path / "a2.json").read_bytes()


@pytest.mark.parametrize(
    ("obj", "where"),
    [
        ({"a": [{"b": float("nan")}]}, "$.a[0].b"),
        ({"x": np.array([[0.0, 1.0, 2.0], [0.0, 1.0, np.inf]])}, "$.x[1][2]"),
        ({"x": np.array([1.0, np.nan], dtype=np.float32)}, "$.x[1]"),
        ({"s": {4: np.float32(-np.inf)}}, "$.s.4"),
        ({"j": jnp.asarray([jnp.nan])}, "$.j[0]"),
    ],
)
def test_json_refuses_nan_and_inf_naming_the_key_path(tmp_path, obj, where):
    with pytest.raises(ValueError, match=r"NaN and infinity are refused") as e:
        report.write_json(tmp_path / "r.json", obj)
    assert where in str(e.value)
    assert not (tmp_path / "r.json").exists()


def test_json_rejects_unsupported_types_and_key_collisions():
    with pytest.raises(TypeError, match=r"type set at \$\.a"):
        report.to_jsonable({"a": {1, 2}})
    with pytest.raises(TypeError, match=r"type complex at \$\.c\[0\]"):
        report.to_jsonable({"c": [1j]})
    with pytest.raises(TypeError, match=r"key \(1, 2\) \(tuple\) at \$"):
        report.to_jsonable({(1, 2): 0})
    with pytest.raises(ValueError, match=r"both become '8'"):
        report.to_jsonable({8: 1, "8": 2})
    with pytest.raises(TypeError, match=r"object array at \$\.o"):
        report.to_jsonable({"o": np.array([None, 1], dtype=object)})


def test_read_json_refuses_nan_and_names_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"a": NaN}')
    with pytest.raises(ValueError, match=r"bad\.json.*NaN"):
        report.read_json(p)
    p.write_text('{"a": ')
    with pytest.raises(ValueError, match=r"bad\.json' is not valid results JSON"):
        report.read_json(p)


class _ExplodingArray:
    """An array-like whose conversion fails, standing in for an error during serialisation."""

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("device buffer was deleted")


def test_serialisation_error_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "results.json"
    report.write_json(path, {"ok": 1})
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="device buffer was deleted"):
        report.write_json(path, {"a": 1, "z": {"x": _ExplodingArray()}})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_write_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch, failing):
    path = tmp_path / "report.md"
    report.write_text(path, "old\n")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(iomod.os, failing, boom)
    with pytest.raises(report.OutputError, match=r"report\.md.*No space left on device") as e:
        report.write_text(path, "new\n")
    monkeypatch.undo()
    assert e.value.path == str(path)
    assert path.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["report.md"]


def test_interrupt_during_write_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "r.json"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(iomod.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.write_json(path, {"a": 1})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_unwritable_output_directory_errors_name_path_and_reason(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    target = blocker / "out" / "results.json"
    with pytest.raises(report.OutputError) as e:
        report.write_json(target, {"a": 1})
    msg = str(e.value)
    assert str(target) in msg and "cannot create directory" in msg
    assert isinstance(e.value, OSError) and e.value.path == str(target)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(iomod.tempfile, "mkstemp", denied)
    with pytest.raises(report.OutputError, match=r"is not writable \(Permission denied\)") as e:
        report.write_text(tmp_path / "r.md", "x")
    assert str(tmp_path / "r.md") in str(e.value) and e.value.reason.startswith("directory")

    monkeypatch.undo()
    with pytest.raises(report.OutputError, match="it is a directory"):
        report.write_text(tmp_path, "x")


def test_atomic_write_creates_parents_and_keeps_permissions(tmp_path):
    path = tmp_path / "a" / "b" / "f.txt"
    report.atomic_write(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    assert path.stat().st_mode & 0o777 == iomod._new_file_mode()
    os.chmod(path, 0o600)
    report.write_text(path, "text ✓")
    assert path.read_text(encoding="utf-8") == "text ✓"
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(TypeError, match="bytes or str"):
        report.atomic_write(path, 3)


# ---------------------------------------------------------------------------- Markdown


def test_markdown_table_golden():
    jd = "boundary_jaccard_distance"
    rows = [
        {"bits": 8, "method": "nearest", jd: 0.428, "flip_rate": 0.0},
        {"bits": 4, "method": "a|b", jd: np.float32(0.97), "flip_rate": None},
        {"bits": 2, "method": "floor", "ok": True},
    ]
    table = report.markdown_table(
        rows,
        ["bits", "method", jd, "flip_rate", "ok"],
        formats={jd: ".3f", "flip_rate": ".2%"},
        headers={"method": "rounding"},
    )
    assert table == (
        "| bits | rounding | boundary_jaccard_distance | flip_rate | ok  |\n"
        "| ---: | -------- | ------------------------: | --------: | --- |\n"
        "|    8 | nearest  |                     0.428 |     0.00% | —   |\n"
        "|    4 | a\\|b     |                     0.970 |         — | —   |\n"
        "|    2 | floor    |                         — |         — | yes |\n"
    )
    # Default float format: 4 significant digits, or the vocabulary's format of a metric column
    # (also for its _std; a count's mean over seeds keeps 4 significant digits); ints as ints.
    assert report.markdown_table([{"x": 0.123456}], ["x"]).splitlines()[2] == "| 0.1235 |"
    row = {jd: 0.123456, jd + "_std": 0.01, "band_size": 45.5, "heldout_size": 450, "x": 3}
    cells = report.markdown_table([row], list(row)).splitlines()[2].split("|")[1:-1]
    assert [c.strip() for c in cells] == ["0.123", "0.010", "45.5", "450", "3"]


def test_markdown_table_bad_inputs():
    with pytest.raises(ValueError, match=r"rows\[0\]\['x'\] is nan"):
        report.markdown_table([{"x": float("nan")}], ["x"])
    with pytest.raises(ValueError, match=r"formats names columns that are not in columns: \['y'\]"):
        report.markdown_table([{"x": 1}], ["x"], formats={"y": ".2f"})
    with pytest.raises(ValueError, match="at least one column"):
        report.markdown_table([{"x": 1}], [])
    with pytest.raises(ValueError, match=r"format '\.2d' does not apply"):
        report.markdown_table([{"x": 0.5}], ["x"], formats={"x": ".2d"})


def test_paper_comparison_table_golden_and_json_keys():
    jd = "boundary_jaccard_distance"
    ours = [
        {"bits": 8, jd: 0.41, jd + "_std": 0.02, "flip_rate": 0.0},
        {"bits": 6, jd: 0.6, "flip_rate": 0.0012},
        {"bits": 4, jd: 0.95, "flip_rate": None},
    ]
    paper = {8: {"flip_rate": 0.0, jd: 0.428}, 4: {jd: 0.970}}
    expected = (
        "| bits | boundary_jaccard_distance (ours) | boundary_jaccard_distance (paper) "
        "| flip_rate (ours) | flip_rate (paper) |\n"
        "| ---: | -------------------------------: | --------------------------------: "
        "| ---------------: | ----------------: |\n"
        "|    8 |                    0.410 ± 0.020 |                             0.428 "
        "|           0.0000 |            0.0000 |\n"
        "|    6 |                            0.600 |                                 — "
        "|           0.0012 |                 — |\n"
        "|    4 |                            0.950 |                             0.970 "
        "|                — |                 — |\n"
    )
    kwargs = dict(key="bits", metrics=[jd, "flip_rate"], formats={jd: ".3f", "flip_rate": ".4f"})
    assert report.paper_comparison_table(ours, paper=paper, **kwargs) == expected
    # without formats each metric takes its vocabulary format (.3f and .4f here)
    defaults = dict(kwargs, formats=None)
    assert report.paper_comparison_table(ours, paper=paper, **defaults) == expected
    # The same paper table after a JSON round trip (int keys became strings).
    paper_json = json.loads(report.json_dumps(paper))
    assert report.paper_comparison_table(ours, paper=paper_json, **kwargs) == expected
    rows = report.paper_comparison_rows(ours, key="bits", metrics=["flip_rate"], paper=None)
    assert [r["flip_rate_paper"] for r in rows] == [None, None, None]
    with pytest.raises(ValueError, match=r"rows\[0\] lacks the key column\(s\) \['method'\]"):
        report.paper_comparison_rows(ours, key=("bits", "method"), metrics=[], paper=paper)


def test_report_renders_and_links_figures_relative(tmp_path):
    out = tmp_path / "run"
    fig_path = out / "figures" / "bits.png"
    fig = report.plot_curves({"a": ([0, 1], [1, 0])}, xlabel="t", ylabel="loss")
    report.save_figure(fig, fig_path)
    r = report.Report("Bits sweep — digits", intro="Settings below.")
    sec = r.section("Results")
    sec.text("Mean over seeds.").table([{"bits": 8, "flip_rate": 0.0}], ["bits", "flip_rate"])
    sec.figure(fig_path, caption="flip_rate vs bits")
    r.section("Command", level=3).code("bq-jax reproduce digits", "sh").bullets(["seed 0", "R=64"])
    text = r.write(out / "report.md")
    assert (out / "report.md").read_text(encoding="utf-8") == text
    assert text == (
        "# Bits sweep — digits\n\nSettings below.\n\n## Results\n\nMean over seeds.\n\n"
        "| bits | flip_rate |\n| ---: | --------: |\n|    8 |    0.0000 |\n\n"
        "![flip_rate vs bits](figures/bits.png)\n\n*flip_rate vs bits*\n\n"
        "### Command\n\n```sh\nbq-jax reproduce digits\n```\n\n- seed 0\n- R=64\n"
    )
    r.section("Missing").figure(out / "figures" / "nope.png")
    with pytest.raises(ValueError, match=r"nope\.png.*does not exist"):
        r.write(out / "report.md")
    assert (out / "report.md").read_text(encoding="utf-8") == text  # untouched
    with pytest.raises(ValueError, match="level must be an int in 2..6"):
        r.section("x", level=1)


# ---------------------------------------------------------------------------- figures


def _png_bytes(fig, path):
    report.save_figure(fig, path)
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert b"matplotlib" not in data.lower()  # no Software chunk
    return data


def _maps():
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 1, 1], [2, 2, 2, 2]])  # 1 junction
    float_map = np.repeat(np.repeat(labels, 4, axis=0), 4, axis=1)  # 16 x 16
    variant = float_map.copy()
    variant[6:10, 4:12] = 2
    return float_map, np.stack([float_map, variant])


def test_plot_boundary_maps_png_deterministic_with_markers(tmp_path):
    lf, lv = _maps()
    kwargs = dict(extent=(-1.0, 2.0, 0.0, 3.0), titles=["float", "8-bit", "4-bit"], num_classes=3)
    fig = report.plot_boundary_maps(lf, lv, **kwargs)
    assert len(fig.axes) == 3
    a = _png_bytes(fig, tmp_path / "a.png")
    b = _png_bytes(report.plot_boundary_maps(lf, list(lv), **kwargs), tmp_path / "b.png")
    assert a == b
    # Junction markers sit at the 2x2 block centres, in slice coordinates (step 3/15 = 0.2).
    tj = np.asarray(geometry.triple_junctions(lf))
    rows, cols = np.nonzero(tj)
    offsets = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], -1.0 + (cols + 0.5) * 0.2, atol=1e-12)
    np.testing.assert_allclose(offsets[:, 1], 0.0 + (rows + 0.5) * 0.2, atol=1e-12)
    assert len(offsets) == tj.sum() == 1
    # Panel titles state the metrics under their vocabulary keys; the identical variant has 0.
    assert fig.axes[0].get_title() == "float\ntriple_junction_count=1"
    assert fig.axes[1].get_title() == (
        "8-bit\nboundary_jaccard_distance=0.000\ntriple_junction_count=1"
    )
    jd = geometry.boundary_jaccard_distance(
        geometry.boundary_mask(lf), geometry.boundary_mask(lv[1])
    )
    assert fig.axes[2].get_title().startswith(f"4-bit\nboundary_jaccard_distance={float(jd):.3f}")
    assert 0.0 < float(jd) < 1.0


def test_boundary_overlay_colours():
    fm = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
    vm = np.array([[0, 1, 1], [0, 0, 0]], dtype=bool)
    rgba = figmod._overlay_rgba(fm, vm)
    from matplotlib.colors import to_rgba

    assert tuple(rgba[0, 0]) == to_rgba(figmod._FLOAT_ONLY)
    assert tuple(rgba[0, 1]) == to_rgba(figmod._BOTH)
    assert tuple(rgba[0, 2]) == to_rgba(figmod._VARIANT_ONLY)
    assert rgba[1, :, 3].max() == 0.0  # transparent where neither mask is set
    assert len({figmod._FLOAT_ONLY, figmod._VARIANT_ONLY, figmod._BOTH}) == 3


def test_plot_boundary_maps_bad_inputs():
    lf, lv = _maps()
    with pytest.raises(ValueError, match=r"labels_variants\[1\] has shape \(16, 15\).*\(16, 16\)"):
        report.plot_boundary_maps(lf, [lf, lf[:, :15]])
    with pytest.raises(ValueError, match=r"\[V, R, C\].*one map of shape \(16, 16\)"):
        report.plot_boundary_maps(lf, lf)
    with pytest.raises(ValueError, match="titles must have 3 entries"):
        report.plot_boundary_maps(lf, lv, titles=["float"])
    with pytest.raises(ValueError, match="label 2 found but num_classes=2"):
        report.plot_boundary_maps(lf, lv, num_classes=2)
    with pytest.raises(ValueError, match="integer class labels, got dtype float64"):
        report.plot_boundary_maps(lf.astype(float), lv)
    with pytest.raises(ValueError, match=r"extent must be \(u_min, u_max, v_min, v_max\)"):
        report.plot_boundary_maps(lf, lv, extent=(0, 1))
    with pytest.raises(ValueError, match="u_min < u_max"):
        report.plot_boundary_maps(lf, lv, extent=(1, 0, 0, 1))


def _sweep_rows():
    rows = []
    for method, offset in (("minmax", 0.0), ("mse", -0.05)):
        for bits in (2, 4, 8):
            for seed in range(3):
                rows.append(
                    {
                        "bits": bits,
                        "seed": seed,
                        "range_method": method,
                        "boundary_jaccard_distance": 1.0 / bits + offset + 0.01 * seed,
                        "flip_rate": 0.1 / bits**2 + 0.001 * seed,
                    }
                )
    return rows


def test_plot_metric_vs_bits_means_errorbars_paper(tmp_path):
    rows = _sweep_rows()
    jd = "boundary_jaccard_distance"
    paper = {8: {jd: 0.428, "flip_rate": 0.0}, 4: {jd: 0.97}}
    kwargs = dict(metric=[jd, "flip_rate"], by="range_method", paper=paper)
    fig = report.plot_metric_vs_bits(rows, **kwargs)
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    assert ax.get_ylabel() == jd and ax.get_xlabel() == "bits"
    # First line = minmax group: mean over the 3 seeds, error bar = sample std (ddof=1).
    line = ax.containers[0].lines[0]
    np.testing.assert_allclose(line.get_xdata(), [2, 4, 8])
    np.testing.assert_allclose(line.get_ydata(), [0.51, 0.26, 0.135], rtol=1e-12)
    segs = ax.containers[0].lines[2][0].get_segments()
    np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in segs], [0.02] * 3, rtol=1e-9)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "range_method=minmax",
        "range_method=mse",
        "paper",
    ]
    np.testing.assert_allclose(ax.collections[-1].get_offsets(), [[8, 0.428], [4, 0.97]])
    a = _png_bytes(fig, tmp_path / "a.png")
    assert a == _png_bytes(report.plot_metric_vs_bits(rows, **kwargs), tmp_path / "b.png")


def test_plot_metric_vs_bits_uses_std_column_of_averaged_rows():
    rows = [
        {"bits": 4, "flip_rate": 0.02, "flip_rate_std": 0.005, "n_seeds": 3},
        {"bits": 8, "flip_rate": 0.0, "flip_rate_std": 0.0, "n_seeds": 3},
        {"bits": 6, "flip_rate": None},
    ]
    fig = report.plot_metric_vs_bits(rows, metric="flip_rate")
    assert len(fig.axes) == 1
    cont = fig.axes[0].containers[0]
    np.testing.assert_allclose(cont.lines[0].get_xdata(), [4, 8])
    segs = cont.lines[2][0].get_segments()
    np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in segs], [0.01, 0.0], atol=1e-15)


def test_plot_metric_vs_bits_bad_inputs():
    rows = _sweep_rows()
    with pytest.raises(ValueError, match=r"unknown metric key 'boundary_jacard'.*boundary_jaccard"):
        report.plot_metric_vs_bits(rows, metric="boundary_jacard")
    with pytest.raises(ValueError, match=r"row 0 has no 'bit' key \(bits_key\)"):
        report.plot_metric_vs_bits(rows, metric="flip_rate", bits_key="bit")
    with pytest.raises(ValueError, match=r"row 0 has no 'method' key \(by\)"):
        report.plot_metric_vs_bits(rows, metric="flip_rate", by="method")
    with pytest.raises(ValueError, match=r"row 1 'flip_rate' is nan"):
        report.plot_metric_vs_bits(
            [{"bits": 2, "flip_rate": 0.1}, {"bits": 4, "flip_rate": float("nan")}],
            metric="flip_rate",
        )
    with pytest.raises(ValueError, match="at least one row"):
        report.plot_metric_vs_bits([], metric="flip_rate")


def test_plot_scatter_pearson_title_and_png(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, 12)
    y = x + 0.05 * rng.standard_normal(12)
    kwargs = dict(
        xlabel="calibration_boundary_jaccard_distance",
        ylabel="heldout_boundary_jaccard_distance",
        annotate=[f"{b}-bit" for b in range(12)],
        groups=["ptq"] * 6 + ["adaround"] * 6,
    )
    fig = report.plot_scatter(x, y, **kwargs)
    assert len(fig.axes) == 1
    r = np.corrcoef(x, y)[0, 1]
    assert fig.axes[0].get_title() == f"Pearson r = {r:.3f} (n = 12)"
    assert stats.pearson_r(x, y) == pytest.approx(r, rel=1e-12)
    a = _png_bytes(fig, tmp_path / "a.png")
    assert a == _png_bytes(report.plot_scatter(x, y, **kwargs), tmp_path / "b.png")
    assert stats.pearson_r([1.0, 1.0], [0.0, 2.0]) is None
    assert stats.pearson_r([1.0], [2.0]) is None
    t = report.plot_scatter([0.5, 0.5], [0.1, 0.2], xlabel="a", ylabel="b").axes[0].get_title()
    assert t == "Pearson r undefined (n = 2)"
    with pytest.raises(ValueError, match=r"same length, got shapes \(3,\) and \(2,\)"):
        report.plot_scatter([1, 2, 3], [1, 2], xlabel="a", ylabel="b")
    with pytest.raises(ValueError, match=r"annotate must have one entry per point \(2\)"):
        report.plot_scatter([1, 2], [1, 2], xlabel="a", ylabel="b", annotate=["x"])
    with pytest.raises(ValueError, match="finite"):
        report.plot_scatter([1, np.nan], [1, 2], xlabel="a", ylabel="b")


def test_plot_curves_png_and_bad_inputs(tmp_path):
    t = np.linspace(0, 1, 20)
    curves = {"train": (t, np.exp(-t)), "heldout": (t, np.exp(-0.5 * t))}
    fig = report.plot_curves(curves, xlabel="t", ylabel="loss", vlines={"chosen": 0.4}, logy=True)
    assert len(fig.axes) == 1
    assert [ln.get_label() for ln in fig.axes[0].lines] == ["train", "heldout", "chosen"]
    a = _png_bytes(fig, tmp_path / "a.png")
    fig2 = report.plot_curves(curves, xlabel="t", ylabel="loss", vlines={"chosen": 0.4}, logy=True)
    assert a == _png_bytes(fig2, tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"curve 'x': x and y must be non-empty 1-D"):
        report.plot_curves({"x": ([0, 1], [1, 2, 3])}, xlabel="t", ylabel="loss")
    with pytest.raises(ValueError, match=r"curve 'x' has y <= 0"):
        report.plot_curves({"x": ([0, 1], [1, 0])}, xlabel="t", ylabel="loss", logy=True)
    with pytest.raises(ValueError, match="at least one curve"):
        report.plot_curves({}, xlabel="t", ylabel="loss")


def test_plot_slice_values_dots_means_intervals_and_bad_inputs(tmp_path):
    series = {
        "calibration": [[0.1, 0.3, 0.2], [0.6, 0.8]],
        "heldout": [[0.2, 0.2], [0.7, 0.9, 0.8]],
    }
    intervals = {"calibration": [(0.1, 0.3), None], "heldout": [(0.15, 0.25), (0.7, 0.9)]}
    kwargs = dict(ylabel="boundary_jaccard_distance", intervals=intervals, threshold=0.5)
    fig = report.plot_slice_values(["8b", "4b"], series, **kwargs)
    ax = fig.axes[0]
    # one dot per plane, the mean of each column as a bar, one line per interval given
    dots = sorted(len(c.get_offsets()) for c in ax.collections if c.get_offsets().shape[1] == 2)
    assert dots[-4:] == [2, 2, 3, 3]
    segments = [s for c in ax.collections for s in getattr(c, "get_segments", list)()]
    means = sorted(round(float(s[0][1]), 6) for s in segments if s[0][1] == s[1][1])
    assert means == sorted(round(float(np.mean(v)), 6) for vals in series.values() for v in vals)
    assert sum(s[0][0] == s[1][0] for s in segments) == 3  # three intervals, one None
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8b", "4b"]
    a = _png_bytes(fig, tmp_path / "a.png")
    assert a == _png_bytes(
        report.plot_slice_values(["8b", "4b"], series, **kwargs), tmp_path / "b.png"
    )
    with pytest.raises(ValueError, match="2 value lists for 1 groups"):
        report.plot_slice_values(["8b"], series, ylabel="x")
    with pytest.raises(ValueError, match="NaN or inf"):
        report.plot_slice_values(["8b"], {"a": [[np.nan]]}, ylabel="x")
    with pytest.raises(ValueError, match="at least one group"):
        report.plot_slice_values([], {}, ylabel="x")


def test_save_figure_rejects_non_png(tmp_path):
    fig = report.plot_curves({"a": ([0, 1], [0, 1])}, xlabel="t", ylabel="loss")
    with pytest.raises(ValueError, match=r"must end in '\.png'"):
        report.save_figure(fig, tmp_path / "f.pdf")


def test_figures_render_identically_from_threads(tmp_path):
    lf, lv = _maps()
    serial = _png_bytes(report.plot_boundary_maps(lf, lv), tmp_path / "serial.png")
    results = {}

    def work(k):
        report.save_figure(report.plot_boundary_maps(lf, lv), tmp_path / f"t{k}.png")
        results[k] = (tmp_path / f"t{k}.png").read_bytes()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert [results[k] == serial for k in range(2)] == [True] * 2


def test_import_pulls_no_pyplot_and_only_lower_layers(tmp_path):
    # report sits above geometry: it may load geometry (and what geometry stands on), never
    # pyplot and no other sub-package (ptq, qat, studies, ...)
    code = (
        "import sys, numpy as np\n"
        "import bq_jax.report as r\n"
        "f = r.plot_boundary_maps(np.eye(4, dtype=int), [np.eye(4, dtype=int)])\n"
        f"r.save_figure(f, {str(tmp_path / 'x.png')!r})\n"
        "subs = sorted({m.split('.')[1] for m in sys.modules if m.startswith('bq_jax.')})\n"
        "print(subs, 'matplotlib.pyplot' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()
    assert out == "['_src', 'geometry', 'report', 'stats', 'vocabulary'] False"
