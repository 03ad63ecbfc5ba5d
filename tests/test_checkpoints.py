"""RunCheckpoints: the latest and best orbax checkpoints of a run directory, on disk."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxguard.checkpoints import CheckpointError, RunCheckpoints, committed_steps


def _arrays(shift):
    return {
        "params": {"dense": {"kernel": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3) + shift}},
        "model_state": {"count": jnp.asarray([shift, 2 * shift], jnp.int32)},
        "rng": jax.random.key(shift),
        "legacy_rng": jax.random.PRNGKey(shift),  # A raw uint32 key stays raw.
        "step": jnp.asarray(10 * shift, jnp.int32),
    }


def _assert_same(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        assert got.dtype == want.dtype
        if jnp.issubdtype(want.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(got) == jax.random.key_impl(want)
            np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(want))
        else:
            np.testing.assert_array_equal(got, want)


def _save(checkpoints, step, arrays, meta, *, is_best):
    """Latest, then best when `is_best`: the order `loop.save_checkpoint` follows."""
    checkpoints.save_latest(step, arrays, meta)
    if is_best:
        checkpoints.save_best(step, arrays, meta)


def _steps(workdir, which):
    return sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints", which)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Four saves, keep_latest 2, steps 1 and 3 the best; then closed. Tests only read it."""
    workdir = str(tmp_path_factory.mktemp("saved") / "run")
    checkpoints = RunCheckpoints(workdir, keep_latest=2)
    for step in (1, 2, 3, 4):
        meta = {"epoch": step - 1, "history": [{"loss": 1.0 / step}], "best": None}
        _save(checkpoints, step, _arrays(step), meta, is_best=step in (1, 3))
    checkpoints.close()
    return workdir


def test_nothing_to_restore_in_a_new_run(tmp_path):
    checkpoints = RunCheckpoints(str(tmp_path / "new"), keep_latest=2)
    assert checkpoints.restore_latest(_arrays(0)) is None
    assert checkpoints.restore_best(_arrays(0)) is None
    assert _steps(tmp_path / "new", "latest") == _steps(tmp_path / "new", "best") == []
    checkpoints.close()


def test_latest_keeps_the_last_keep_latest_saves_and_best_keeps_one(saved):
    assert _steps(saved, "latest") == [3, 4]
    assert _steps(saved, "best") == [3]


def test_restore_latest_gives_the_last_save_with_its_meta(saved):
    checkpoints = RunCheckpoints(saved, keep_latest=2)  # As a resumed run opens it.
    arrays, meta = checkpoints.restore_latest(_arrays(0))
    _assert_same(arrays, _arrays(4))
    assert meta == {"epoch": 3, "history": [{"loss": 0.25}], "best": None}
    assert isinstance(meta, dict)
    checkpoints.close()


def test_restore_best_gives_the_last_save_marked_best(saved):
    checkpoints = RunCheckpoints(saved, keep_latest=2)
    arrays, meta = checkpoints.restore_best(_arrays(0))
    _assert_same(arrays, _arrays(3))
    assert meta["epoch"] == 2
    checkpoints.close()


def test_a_best_older_than_the_kept_latest_survives(tmp_path):
    workdir = str(tmp_path / "run")
    checkpoints = RunCheckpoints(workdir, keep_latest=1)
    for step in (1, 2, 3):
        _save(checkpoints, step, _arrays(step), {"epoch": step}, is_best=step == 1)
    assert _steps(workdir, "latest") == [3]
    assert _steps(workdir, "best") == [1]
    _assert_same(checkpoints.restore_best(_arrays(0))[0], _arrays(1))
    _assert_same(checkpoints.restore_latest(_arrays(0))[0], _arrays(3))
    checkpoints.close()


def test_a_failed_save_leaves_the_previous_checkpoints_intact(tmp_path):
    saved = str(tmp_path / "run")
    checkpoints = RunCheckpoints(saved, keep_latest=2)
    _save(checkpoints, 3, _arrays(3), {"epoch": 2}, is_best=True)
    _save(checkpoints, 4, _arrays(4), {"epoch": 3}, is_best=False)
    with pytest.raises(TypeError, match="not JSON serializable"):
        _save(checkpoints, 5, _arrays(5), {"epoch": {4}}, is_best=True)  # A set: the meta fails.
    checkpoints.close()
    # Orbax writes into a temporary folder renamed when complete: what the failed save left
    # is no checkpoint, and the run directory, reopened, gives the previous ones unchanged.
    reopened = RunCheckpoints(saved, keep_latest=2)
    arrays, meta = reopened.restore_latest(_arrays(0))
    _assert_same(arrays, _arrays(4))
    assert meta["epoch"] == 3
    _assert_same(reopened.restore_best(_arrays(0))[0], _arrays(3))
    reopened.close()
    assert "5" not in os.listdir(os.path.join(saved, "checkpoints", "latest"))
    assert _steps(saved, "best") == [3]


def test_the_workdir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoints = RunCheckpoints("relative", keep_latest=1)
    _save(checkpoints, 1, _arrays(1), {"epoch": 0}, is_best=False)
    checkpoints.close()
    assert _steps(tmp_path / "relative", "latest") == [1]
    assert _steps(tmp_path / "relative", "best") == []


def test_committed_steps_ignores_unfinished_and_set_aside_folders(tmp_path):
    for name in ("3", "12", "7.corrupt", "9.orbax-checkpoint-tmp-123"):
        os.makedirs(tmp_path / name)
    assert committed_steps(str(tmp_path)) == [12, 3]
    assert committed_steps(str(tmp_path / "missing")) == []


def _three_saves(workdir):
    checkpoints = RunCheckpoints(workdir, keep_latest=3)
    for step in (1, 2, 3):
        checkpoints.save_latest(step, _arrays(step), {"epoch": step - 1})
    return checkpoints


def test_a_newest_save_that_fails_is_set_aside_and_the_previous_one_used(tmp_path):
    workdir = str(tmp_path / "run")
    checkpoints = _three_saves(workdir)
    latest = os.path.join(workdir, "checkpoints", "latest")
    with open(os.path.join(latest, "3", "meta", "metadata"), "w") as f:
        f.write("{not json")
    warnings = []
    arrays, meta = checkpoints.restore_latest(_arrays(0), warn=warnings.append)
    _assert_same(arrays, _arrays(2))
    assert meta == {"epoch": 1}
    assert sorted(os.listdir(latest)) == ["1", "2", "3.corrupt"]
    assert len(warnings) == 1 and "3.corrupt" in warnings[0] and "step 2" in warnings[0]
    checkpoints.save_latest(4, _arrays(4), {"epoch": 3})  # The managers see the rename.
    assert committed_steps(latest) == [4, 2, 1]
    checkpoints.close()


def test_a_check_that_rejects_the_meta_sets_the_save_aside(tmp_path):
    checkpoints = _three_saves(str(tmp_path / "run"))

    def check(step, arrays, meta):
        if meta["epoch"] != step - 1 or step == 3:
            raise ValueError("meta does not fit")

    _, meta = checkpoints.restore_latest(_arrays(0), check=check, warn=lambda line: None)
    assert meta == {"epoch": 1}
    checkpoints.close()


def test_when_no_save_restores_nothing_is_renamed_and_one_line_says_so(tmp_path):
    workdir = str(tmp_path / "run")
    checkpoints = _three_saves(workdir)
    other_shapes = {"params": {"dense": {"kernel": jnp.zeros((5, 5))}}}
    with pytest.raises(CheckpointError) as info:
        checkpoints.restore_latest(other_shapes)
    message = str(info.value)
    assert "\n" not in message and "no checkpoint in" in message and "step 3" in message
    assert _steps(workdir, "latest") == [1, 2, 3]
    checkpoints.close()


def test_set_aside_never_overwrites_an_earlier_set_aside(tmp_path):
    workdir = str(tmp_path / "run")
    checkpoints = _three_saves(workdir)
    first = checkpoints.set_aside(checkpoints.latest_dir, 3)
    checkpoints.save_latest(3, _arrays(3), {"epoch": 2})
    second = checkpoints.set_aside(checkpoints.latest_dir, 3)
    assert first.endswith("3.corrupt") and second.endswith("3.corrupt.1")
    checkpoints.close()
