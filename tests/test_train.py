"""The training loop shared by float training and QAT, and the checkpoint format they share."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bq_jax.data import load_dataset
from bq_jax.models import make_model
from bq_jax.train import (
    CheckpointError,
    CheckpointMismatchError,
    NonFiniteLossError,
    TrainConfig,
    load_checkpoint,
    load_train_state,
    run_epochs,
    save_checkpoint,
    save_train_state,
    train_with_history,
)


def _run(step, n, batch_size, epochs, key, **kwargs):
    """run_epochs over labels 0..n-1 (the step sees which examples each batch holds)."""
    x, y = np.zeros((n, 1)), np.arange(n)
    return run_epochs(
        step, 0, x, y, batch_size=batch_size, epochs=epochs, shuffle_key=key, **kwargs
    )


def _recording_step(seen):
    def step(state, batch):
        _, yb = batch
        seen.append(np.asarray(yb))
        return state + 1, {"loss": jnp.float32(0.0)}

    return step


def test_run_epochs_visits_the_fold_in_permutation_of_each_epoch():
    n, key = 10, jax.random.key(3)
    seen = []
    run = _run(_recording_step(seen), n, 4, 3, key)
    assert run.epochs_done == 3 and run.state == 6 and not run.stopped
    for epoch in range(3):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
        np.testing.assert_array_equal(np.concatenate(seen[2 * epoch : 2 * epoch + 2]), perm[:8])
    # A resumed run starts at its epoch with that epoch's permutation.
    later = []
    assert _run(_recording_step(later), n, 4, 3, key, start_epoch=2).state == 2
    np.testing.assert_array_equal(np.concatenate(later), np.concatenate(seen[4:]))
    # on_epoch stops the run.
    run = _run(_recording_step([]), n, 4, 3, key, on_epoch=lambda e, s, m: e == 0)
    assert (run.epochs_done, run.state, run.stopped) == (1, 2, True)


def test_run_epochs_stops_on_a_non_finite_loss_naming_epoch_and_step():
    def step(state, batch):
        loss = jnp.where(state == 4, jnp.float32(jnp.nan), jnp.float32(1.0))
        return state + 1, {"loss": loss}

    match = r"at epoch 2, step 2 of 3 \(global step 5\); try less"
    with pytest.raises(NonFiniteLossError, match=match) as err:
        _run(step, 9, 3, 4, jax.random.key(0), hint="; try less")
    assert (err.value.epoch, err.value.step, err.value.checkpoint) == (1, 4, None)


@pytest.fixture(scope="module")
def tiny():
    data = load_dataset("digits", subset=(8, 3), calibration_size=20)
    model = make_model("mlp", num_classes=10, input_shape=(64,), width=8, depth=1)
    return data, model


def test_float_training_resumes_bit_identically(tiny, tmp_path):
    data, model = tiny
    config = TrainConfig(epochs=3, batch_size=16)
    key = jax.random.key(0)
    full, full_history = train_with_history(model, data, config, key, progress=False)
    path = tmp_path / "run.ckpt"
    train_with_history(
        model,
        data,
        config,
        key,
        progress=False,
        checkpoint_path=path,
        callback=lambda epoch, entry, variables: epoch == 1,
    )
    _, meta = load_train_state(path, _state_template(model, config, data, key))
    assert meta["epoch"] == 1
    done, history = train_with_history(
        model, data, config, key, progress=False, checkpoint_path=path
    )
    for k in ("epoch", "train_loss", "train_accuracy", "calibration_accuracy"):
        assert history[k] == full_history[k]
    assert history["steps"] == full_history["steps"]
    for a, b in zip(jax.tree.leaves(done), jax.tree.leaves(full), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(CheckpointMismatchError, match=r"train_config learning_rate"):
        train_with_history(
            model,
            data,
            TrainConfig(epochs=3, batch_size=16, learning_rate=0.1),
            key,
            progress=False,
            checkpoint_path=path,
        )


def _state_template(model, config, data, key):
    from bq_jax.train import make_optimizer, make_train_step

    tx = make_optimizer(config, steps_per_epoch=data.sizes["train"] // config.batch_size)
    init_state, _ = make_train_step(model, config, tx)
    return init_state(model.init(key), key)


def test_train_state_round_trip_and_refusals(tmp_path):
    tx = optax.adam(1e-3)
    params = {"w": jnp.arange(3.0), "b": jnp.zeros(())}
    state = {
        "step": jnp.int32(7),
        "params": params,
        "opt": tx.init(params),
        "key": jax.random.key(5),
    }
    path = tmp_path / "state.ckpt"
    save_train_state(path, state, epoch=2, train_config=TrainConfig(), extra={"note": [1, 2]})
    restored, meta = load_train_state(path, state, train_config=TrainConfig())
    assert meta["epoch"] == 2 and meta["extra"] == {"note": [1, 2]}
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        if jnp.issubdtype(b.dtype, jax.dtypes.prng_key):
            assert bool(a == b)
        else:
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = {**state, "params": {"w": jnp.zeros(4), "b": jnp.zeros(())}}
    with pytest.raises(CheckpointMismatchError, match=r"state: params/w has shape \(3,\)"):
        load_train_state(path, other)
    with pytest.raises(CheckpointMismatchError, match=r"train_config epochs: checkpoint 10"):
        load_train_state(path, state, train_config=TrainConfig(epochs=11))
    with pytest.raises(CheckpointError, match="read it with load_train_state"):
        load_checkpoint(path)
    blob = path.read_bytes()
    path.write_bytes(blob[:-3])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_train_state(path, state)
    with pytest.raises(ValueError, match="NaN/inf"):
        save_train_state(path, {"w": jnp.array([jnp.nan])}, epoch=0)


def test_variables_checkpoint_round_trip(tiny, tmp_path):
    _, model = tiny
    variables = model.init(jax.random.key(1))
    path = save_checkpoint(
        tmp_path / "m.ckpt", variables, model=model, train_config=None, data_fingerprint="abc"
    )
    ckpt = load_checkpoint(path, model=model, data_fingerprint="abc")
    for a, b in zip(jax.tree.leaves(ckpt.variables), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(CheckpointMismatchError, match="data_fingerprint"):
        load_checkpoint(path, data_fingerprint="xyz")
    with pytest.raises(CheckpointError, match="read it with load_checkpoint"):
        load_train_state(path, variables)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(epochs=0), ValueError, "epochs must be an int >= 1"),
        (dict(batch_size=2.0), TypeError, "batch_size must be an int"),
        (dict(learning_rate=0.0), ValueError, r"learning_rate must be a finite number in \(0.0"),
        (dict(optimizer="rmsprop"), ValueError, "optimizer must be one of 'adam', 'adamw', 'sgd'"),
        (dict(momentum=1.0), ValueError, r"momentum must be a finite number in \[0.0, 1.0\)"),
        (dict(warmup_epochs=11.0), ValueError, r"warmup_epochs must be .* in \[0.0, 10.0\]"),
        (dict(augment=1), TypeError, "augment must be a bool"),
    ],
)
def test_train_config_validation_names_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        TrainConfig(**kwargs)
    assert TrainConfig(epochs=np.int64(3), learning_rate=np.float32(0.5)).to_dict()["epochs"] == 3
