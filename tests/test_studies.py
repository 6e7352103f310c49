"""Study building blocks: aggregation, stopping rule, junction counting, interpolation ends,
configuration checks. (End-to-end runs are in tests/test_studies_e2e.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax.stats import mean_rows, mean_std
from bq_jax.studies import StudyConfig, default_config
from bq_jax.studies.context import FAMILY_SPLITS, SeedContext
from bq_jax.studies.interpolation import (
    interpolated_weights,
    junction_points,
    near_junctions,
    transition_stats,
)
from bq_jax.studies.stopping import decision_field, select_bits

# ------------------------------------------------------------------------------ aggregation


def test_mean_std_sample_std_and_none():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.5]) == (0.5, 0.0)
    assert mean_std([None, 2.0, None, 4.0]) == (3.0, np.std([2.0, 4.0], ddof=1))
    assert mean_std([None, None]) == (None, None)
    with pytest.raises(ValueError, match="non-finite"):
        mean_std([1.0, float("nan")])


def test_mean_rows_groups_by_key_and_keeps_order():
    seed0 = [{"bits": 8, "a": 1.0, "c": 3, "name": "x"}, {"bits": 4, "a": 0.0, "c": None}]
    seed1 = [{"bits": 8, "a": 3.0, "c": 5, "name": "y"}, {"bits": 4, "a": 2.0, "c": 1}]
    rows = mean_rows([seed0, seed1], ("bits",))
    assert [r["bits"] for r in rows] == [8, 4]
    assert rows[0]["a"] == 2.0 and rows[0]["a_std"] == pytest.approx(np.sqrt(2.0), rel=1e-12)
    assert rows[0]["c"] == 4.0
    assert rows[1]["c"] == 1.0 and rows[1]["c_std"] == 0.0  # None left out of the mean
    assert "name" not in rows[0]  # non-numeric fields stay in per_seed only
    assert rows[0]["n_seeds"] == 2


# ------------------------------------------------------------------------------ stopping rule


def _rows(values):
    return [{"bits": b, "v": v} for b, v in zip(range(8, 8 - len(values), -1), values, strict=True)]


@pytest.mark.parametrize(
    "values, expected",
    [
        ([0.1, 0.2, 0.3, 0.9, 0.95], (6, True)),  # monotone: last passing width
        ([0.1, 0.9, 0.2, 0.3], (8, True)),  # stops at the first failure, never skips it
        ([0.6, 0.1, 0.1], (8, False)),  # even the widest fails: widest, not met
        ([0.5, 0.5, 0.5], (6, True)),  # threshold inclusive
        ([0.1, 0.2, 0.3], (6, True)),  # all pass: the narrowest
    ],
)
def test_select_bits_walks_down_and_stops_at_first_failure(values, expected):
    assert select_bits(_rows(values), "v", 0.5) == expected


def test_select_bits_absorbs_ratio_roundoff():
    # 3 of 300 wrong is a drop of 0.01 exactly; computed as a difference of ratios it can be
    # 0.010000000000000009, which must still pass epsilon = 0.01.
    drop = (297 / 300) - (294 / 300)
    assert drop > 0.01
    assert select_bits([{"bits": 8, "v": 0.0}, {"bits": 7, "v": drop}], "v", 0.01) == (7, True)


# ------------------------------------------------------------------------------ junctions


def _brute_junction_points(labels):
    r, c = labels.shape
    pts = np.zeros((r, c), bool)
    for i in range(r - 1):
        for j in range(c - 1):
            if len({labels[i, j], labels[i + 1, j], labels[i, j + 1], labels[i + 1, j + 1]}) >= 3:
                pts[i : i + 2, j : j + 2] = True
    return pts


def _brute_near(points):
    r, c = points.shape
    out = np.zeros_like(points)
    for i in range(r):
        for j in range(c):
            out[i, j] = points[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].any()
    return out


def test_junction_points_and_dilation_match_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(3, 9, 7)).astype(np.int32)
    pts = junction_points(labels)
    for k in range(3):
        np.testing.assert_array_equal(pts[k], _brute_junction_points(labels[k]))
        np.testing.assert_array_equal(near_junctions(pts[k]), _brute_near(pts[k]))


def test_transition_stats_counts_and_enrichment():
    # A 3-class map with one triple junction at the centre; step 1 changes one cell next to
    # the junction and one far away.
    m0 = np.zeros((8, 8), np.int32)
    m0[:4, 4:] = 1
    m0[4:, :] = 2
    m1 = m0.copy()
    m1[3, 3] = 1  # next to the junction at rows 3-4, cols 3-4
    m1[0, 0] = 1  # far from any junction
    m2 = m1.copy()
    stats = transition_stats(np.stack([m0, m1, m2]))
    assert stats["changed_cells"] == 2
    assert stats["changed_cells_per_step"] == [2, 0]
    assert stats["steps_with_changes"] == 1
    near = near_junctions(junction_points(m0) | junction_points(m1))
    assert stats["changed_cells_at_junctions"] == 1
    expected = 2 * near.sum() / 64.0
    assert stats["expected_at_junctions"] == pytest.approx(expected, rel=1e-12)
    assert stats["junction_enrichment"] == pytest.approx(1.0 / expected, rel=1e-12)
    assert stats["triple_junction_count_from"] == 1 and stats["triple_junction_count_to"] == 1


def test_transition_stats_no_change_gives_undefined_enrichment():
    m = np.zeros((2, 5, 5), np.int32)
    stats = transition_stats(m)
    assert stats["changed_cells"] == 0 and stats["junction_enrichment"] is None


# ------------------------------------------------------------------------------ interpolation


def _toy_variables():
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    return {
        "params": {
            "Dense_0": {"kernel": jax.random.normal(k1, (6, 5)), "bias": jnp.arange(5.0)},
            "Dense_1": {"kernel": jax.random.normal(k2, (5, 3)), "bias": jnp.zeros(3)},
        }
    }


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_interpolation_ends_are_the_adjacent_ptq_quantizers(bits):
    from bq_jax import ptq
    from bq_jax.studies.context import weight_config

    v = _toy_variables()
    at0 = interpolated_weights(v, jnp.float32(0.0), bits=bits)
    at1 = interpolated_weights(v, jnp.float32(1.0), bits=bits)
    hi = ptq.quantize_weights(v, weight_config(bits))
    lo = ptq.quantize_weights(v, weight_config(bits - 1))
    for a, b in zip(jax.tree.leaves(at0), jax.tree.leaves(hi), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(at1), jax.tree.leaves(lo), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # biases are untouched
    np.testing.assert_array_equal(at0["params"]["Dense_0"]["bias"], v["params"]["Dense_0"]["bias"])


def test_interpolated_weights_lie_on_the_interpolated_grid():
    v = _toy_variables()
    t = 0.37
    out = interpolated_weights(v, jnp.float32(t), bits=4)
    w = np.asarray(v["params"]["Dense_0"]["kernel"], np.float64)
    absmax = np.abs(w).max(axis=0, keepdims=True)
    s = (1 - t) * absmax / 7 + t * absmax / 3
    q = np.asarray(out["params"]["Dense_0"]["kernel"], np.float64) / s
    np.testing.assert_allclose(q, np.round(q), atol=1e-4)
    assert np.abs(np.round(q)).max() <= 7


def test_interpolated_weights_compiles_once_per_width():
    v = _toy_variables()
    interpolated_weights(v, jnp.float32(0.1), bits=5)
    before = interpolated_weights._cache_size()
    for t in (0.2, 0.5, 0.9):
        interpolated_weights(v, jnp.float32(t), bits=5)
    assert interpolated_weights._cache_size() == before


def test_interpolated_weights_rejects_two_bits():
    with pytest.raises(ValueError, match="bits must be >= 3"):
        interpolated_weights(_toy_variables(), jnp.float32(0.0), bits=2)


# ------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dataset": "svhn"}, "dataset must be one of"),
        ({"dataset": "digits", "seeds": ()}, "seeds must be a non-empty tuple"),
        ({"dataset": "digits", "seeds": (0, 0)}, "seeds must be distinct"),
        ({"dataset": "digits", "resolution": 4}, "resolution must be an int in"),
        ({"dataset": "digits", "min_bits": 1}, "min_bits must be an int in"),
        ({"dataset": "digits", "min_bits": 5, "max_bits": 5}, "max_bits must exceed min_bits"),
        ({"dataset": "digits", "rounding_bits": (4, 1)}, r"rounding_bits\[i\] must be an int in"),
        (
            {"dataset": "digits", "jaccard_threshold": 1.5},
            "jaccard_threshold must be a finite number in",
        ),
        (
            {"dataset": "digits", "band_quantile": 0.0},
            r"band_quantile must be a finite number in \(0",
        ),
        ({"dataset": "digits", "boundary_gap_weight": -1.0}, "boundary_gap_weight must be >= 0"),
        ({"dataset": "digits", "slice_family": "grid"}, "slice_family must be one of 'pca'"),
        ({"dataset": "digits", "slice_count": 0}, "slice_count must be an int in"),
        ({"dataset": "digits", "family_resolution": 4}, "family_resolution must be an int in"),
        ({"dataset": "digits", "stopping_bound": "lower"}, "stopping_bound must be one of"),
        (
            {"dataset": "digits", "slice_count": 1},
            "stopping_bound='upper' needs slice_count >= 2",
        ),
        ({"dataset": "digits", "confidence_level": 1.0}, "confidence_level must be"),
        ({"dataset": "digits", "bootstrap_resamples": 10}, "bootstrap_resamples must be an int in"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StudyConfig(**kwargs)


def test_config_rejects_wrong_types():
    with pytest.raises(TypeError, match="resolution must be an int"):
        StudyConfig(dataset="digits", resolution=256.0)


def test_one_plane_with_the_mean_bound_is_accepted():
    cfg = StudyConfig(dataset="digits", slice_count=1, stopping_bound="mean", slice_family="pca")
    assert decision_field(cfg, "x") == "x"
    assert decision_field(StudyConfig(dataset="digits"), "x") == "x_high"


def test_seed_context_families_come_from_their_own_split():
    """Calibration planes pass through calibration inputs only, held-out planes through
    held-out inputs only; the families are memoised and their metrics too."""
    cfg = default_config("digits", quick=True, progress=False)
    ctx = SeedContext(cfg, 0, cache_dir=None)
    fams = {split: ctx.family(split) for split in FAMILY_SPLITS}
    assert ctx.family("calibration") is fams["calibration"]
    for split, fam in fams.items():
        assert fam.num_slices == cfg.slice_count and fam.resolution == cfg.family_resolution
        other = "heldout" if split == "calibration" else "calibration"
        own = ctx.inputs(split).reshape(len(ctx.inputs(split)), -1)
        foreign = ctx.inputs(other).reshape(len(ctx.inputs(other)), -1)
        for k in range(fam.num_slices):
            # a triplet plane's origin is one of its three inputs
            o = np.asarray(fam.origin[k])
            assert np.min(np.linalg.norm(own - o, axis=1)) < 1e-5
            assert np.min(np.linalg.norm(foreign - o, axis=1)) > 1e-3
    a = np.asarray(fams["calibration"].basis)
    b = np.asarray(fams["heldout"].basis)
    assert not np.allclose(a, b)
    (m,) = ctx.family_metrics("heldout", [("ptq", 4)], [ctx.ptq(4)])
    assert set(m) == {"boundary_jaccard_distance", "grid_change", "triple_junction_count"}
    assert m["boundary_jaccard_distance"].shape == (cfg.slice_count,)
    (again,) = ctx.family_metrics("heldout", [("ptq", 4)], [None])  # memoised: params unused
    assert again is m


def test_fingerprint_ignores_paths_and_display():
    a = default_config("digits", data_dir="/a", progress=True)
    b = default_config("digits", data_dir="/b", progress=False)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != default_config("digits", resolution=128).fingerprint()
    assert default_config("digits").bits == (8, 7, 6, 5, 4, 3, 2)


# ------------------------------------------------------------------------------ results schema


def test_load_results_refuses_an_older_schema_with_a_way_out(tmp_path):
    from bq_jax.studies import ResultsError, load_results

    path = tmp_path / "results.json"
    path.write_text('{"schema_version": 1, "bits_sweep": {"rows": []}}')
    with pytest.raises(ResultsError, match=r"schema_version 1.*boundary_jaccard_distance.*Re-run"):
        load_results(str(path))
    path.write_text("[1, 2]")
    with pytest.raises(ResultsError, match="not a bq_jax results.json"):
        load_results(str(path))


def test_every_study_module_has_the_protocol_and_its_config_fields_have_flag_help():
    import dataclasses

    from bq_jax import vocabulary
    from bq_jax.studies import STUDIES
    from bq_jax.studies.protocol import PROTOCOL

    for name, module in STUDIES.items():
        assert module.NAME == name
        assert all(hasattr(module, attr) for attr in PROTOCOL), name
        for field in dataclasses.fields(module.CONFIG):
            assert field.name in vocabulary.HYPERPARAMETERS, (name, field.name)
