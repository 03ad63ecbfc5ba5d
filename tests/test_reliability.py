"""A run always resumes to the uninterrupted result, or says in one line why not.

Real `python -m jaxguard.train` processes on the toy task (tests/toy_config.py) are paused
at chosen events (`JAXGUARD_TEST_PAUSE_AT`, see `jaxguard.loop.pause_point`) and killed with
SIGKILL or stopped with SIGTERM, then resumed; their `log.csv` and `test_metrics.json` must
equal an uninterrupted run's. Corrupted checkpoints are resumed in-process (faster).
`tools/kill_resume.py` kills at random points many more times.
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from jaxguard import config as config_lib
from jaxguard import train, trainer
from jaxguard.checkpoints import committed_steps
from jaxguard.writers import Console

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
TOY = os.path.join(TESTS, "toy_config.py")
STEPS_PER_EPOCH = 8  # 256 examples in batches of 32; 5 epochs, each the best so far.
TIMEOUT = 120


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted toy run every interrupted one must reproduce."""
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    trainer.train_and_evaluate(config_lib.load_config(TOY), workdir, console=quiet())
    return workdir


def quiet() -> Console:
    return Console(io.StringIO(), progress=False)


def outputs(workdir: str) -> tuple[bytes, dict]:
    """`log.csv` as bytes and `test_metrics.json` without what differs between processes."""
    with open(os.path.join(workdir, "log.csv"), "rb") as f:
        log = f.read()
    with open(os.path.join(workdir, "test_metrics.json")) as f:
        metrics = json.load(f)
    for key in ("train_seconds", "workdir"):
        metrics.pop(key)
    return log, metrics


def command(workdir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxguard.train", "--cfg", TOY, "--workdir", str(workdir), *extra]


def environment(pause: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, ROOT])}
    env.pop("JAXGUARD_TEST_PAUSE_AT", None)
    if pause is not None:
        env["JAXGUARD_TEST_PAUSE_AT"] = pause
    return env


def stop_at(workdir, pause: str, signum: int, *extra: str) -> tuple[int, str]:
    """Runs until the pause point, sends `signum`; returns the exit code and stderr."""
    process = subprocess.Popen(
        command(workdir, *extra),
        cwd=ROOT,
        env=environment(pause),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith("JAXGUARD_TEST_PAUSED"):
            process.send_signal(signum)
            break
    lines += process.stderr.readlines()
    code = process.wait(timeout=TIMEOUT)
    assert any(line.startswith("JAXGUARD_TEST_PAUSED") for line in lines), "".join(lines)
    return code, "".join(lines)


def resume(workdir) -> str:
    result = subprocess.run(
        command(workdir, "--resume"),
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_killed_and_stopped_three_ways_the_run_resumes_to_the_same_result(reference, tmp_path):
    """One workdir through every interruption: 4 processes instead of 6 keep the test short."""
    latest, best = (str(tmp_path / "checkpoints" / name) for name in ("latest", "best"))
    # 1. SIGKILL before the first commit: latest/ exists, empty; the resume starts over.
    code, _ = stop_at(tmp_path, "save:1", signal.SIGKILL)
    assert code == -signal.SIGKILL and os.path.isdir(latest) and committed_steps(latest) == []
    # 2. That resume gets SIGTERM mid-epoch: it saves step 20, exits 143, says how to resume.
    code, stderr = stop_at(tmp_path, "step:20", signal.SIGTERM, "--resume")
    assert "starting from scratch" in stderr
    last = stderr.strip().splitlines()[-1]
    assert code == 143 and last.startswith("interrupted by SIGTERM: checkpoint at step 20"), stderr
    assert last.endswith(f"--workdir {tmp_path} --resume") and "Traceback" not in stderr
    # 3. The next resume is killed between latest/ and best/ of its third best, the last epoch:
    # without the repair the report would test epoch 3's weights as the best.
    code, stderr = stop_at(tmp_path, "between_latest_and_best:3", signal.SIGKILL, "--resume")
    assert "resumed from epoch 2, 4 steps in (step 20)" in stderr
    assert code == -signal.SIGKILL and committed_steps(best) == [4 * STEPS_PER_EPOCH]
    # 4. The last resume repairs best/ and finishes with the uninterrupted run's files.
    assert "saved again from latest" in resume(tmp_path)
    assert committed_steps(best) == [5 * STEPS_PER_EPOCH]
    assert outputs(tmp_path) == outputs(reference)


def test_signals_during_evaluation_and_the_report_leave_a_run_that_resumes(reference, tmp_path):
    """SIGTERM in a validation pass, then SIGKILL and SIGTERM while the report is written."""
    # 1. SIGTERM during epoch 1's validation: the epoch finishes, is checkpointed, exit 143.
    code, stderr = stop_at(tmp_path, "evaluate:2", signal.SIGTERM)
    last = stderr.strip().splitlines()[-1]
    assert code == 143 and last.startswith(
        "interrupted by SIGTERM: checkpoint at step 16 (epoch 1)"
    )
    # 2. The resume is killed after the test, before its outputs are written.
    code, _ = stop_at(tmp_path, "report:1", signal.SIGKILL, "--resume")
    assert code == -signal.SIGKILL and not os.path.exists(tmp_path / "test_metrics.json")
    # 3. The next resume (all epochs done) tests again; SIGTERM in its report lets it finish.
    code, stderr = stop_at(tmp_path, "report:1", signal.SIGTERM, "--resume")
    assert code == 0 and "resumed from epoch 4" in stderr, stderr
    assert outputs(tmp_path) == outputs(reference)


def copy_run(reference: str, tmp_path) -> str:
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    return workdir


def corrupt_newest(workdir: str, how: str) -> str:
    """Damages `latest/<newest step>` as `how` says; returns its path."""
    latest = os.path.join(workdir, "checkpoints", "latest")
    newest = os.path.join(latest, str(committed_steps(latest)[0]))
    meta = os.path.join(newest, "meta", "metadata")
    if how == "truncated arrays":
        for folder, _, files in os.walk(os.path.join(newest, "arrays", "d")):
            for name in files:
                with open(os.path.join(folder, name), "r+b") as f:
                    f.truncate(3)
    elif how == "deleted arrays":
        shutil.rmtree(os.path.join(newest, "arrays"))
    elif how == "bad JSON meta":
        with open(meta, "w") as f:
            f.write('{"epoch": 4, "hist')
    elif how == "meta epoch edited":
        with open(meta) as f:
            saved = json.load(f)
        saved["epoch"] = 2
        with open(meta, "w") as f:
            json.dump(saved, f)
    return newest


@pytest.mark.parametrize(
    "how", ["truncated arrays", "deleted arrays", "bad JSON meta", "meta epoch edited"]
)
def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_run_redone(reference, tmp_path, how):
    workdir = copy_run(reference, tmp_path)
    newest = corrupt_newest(workdir, how)
    stream = io.StringIO()
    config = config_lib.load_config(TOY)
    trainer.train_and_evaluate(config, workdir, resume=True, console=Console(stream))
    warning = [line for line in stream.getvalue().splitlines() if "does not restore" in line]
    assert len(warning) == 1 and f"set aside as {newest}.corrupt" in warning[0]
    assert os.path.isdir(newest + ".corrupt")
    assert outputs(workdir) == outputs(reference)


def test_when_no_checkpoint_restores_one_line_says_so_and_exit_is_1(reference, tmp_path, capsys):
    workdir = copy_run(reference, tmp_path)
    latest = os.path.join(workdir, "checkpoints", "latest")
    for step in committed_steps(latest):
        shutil.rmtree(os.path.join(latest, str(step), "arrays"))
    with pytest.raises(SystemExit) as info:
        train.main(["--cfg", TOY, "--workdir", workdir, "--resume"])
    assert info.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: no checkpoint in {latest} restores")
    assert "start over with another --workdir" in error
    assert committed_steps(latest) == [40, 32]  # Nothing set aside when nothing restores.


def test_a_deleted_best_is_never_reported_silently(tmp_path):
    # The best by max loss is epoch 0, which latest/ (keep_latest 2) no longer holds.
    config = config_lib.load_config(TOY, ["guard.best.monitor=loss", "guard.best.mode=max"])
    workdir = str(tmp_path / "run")
    assert trainer.train_and_evaluate(config, workdir, console=quiet())["best_epoch"] == 0
    shutil.rmtree(os.path.join(workdir, "checkpoints", "best"))
    stream = io.StringIO()
    summary = trainer.train_and_evaluate(config, workdir, resume=True, console=Console(stream))
    assert summary["best_epoch"] == 4
    warning = "checkpoints/best (epoch 0, step 8) is missing and latest/ no longer holds it"
    assert warning in stream.getvalue()
    with open(os.path.join(workdir, "report.txt")) as f:
        assert warning in f.read()


def test_an_io_failure_is_one_line_with_the_path_and_exit_1(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    workdir = str(blocker / "run")
    with pytest.raises(SystemExit) as info:
        train.main(["--cfg", TOY, "--workdir", workdir])
    assert info.value.code == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith(f"error: {blocker}")
    assert "Not a directory" in error
    with pytest.raises(NotADirectoryError):
        train.main(["--cfg", TOY, "--workdir", workdir, "--debug"])


# ----------------------------------------------------------------------------- I/O failures
# Each ends with one line naming the path and the cause, exit code 1, no traceback (unless
# --debug), and committed checkpoints stay usable.


# Runs the command in argv[3:] under a limit set in a fresh, single-threaded interpreter that
# then execs it (a `preexec_fn` would run after a fork of this JAX-threaded process).
# `fsize N`: files stop at N bytes, as on a full disk: a write beyond fails with EFBIG
# ("File too large") once SIGXFSZ, which would kill the process, is ignored (both survive the
# exec). `permissions -`: file permissions bind the command even as root (tests often run as
# root, who passes them through CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH): the two are dropped
# from the bounding set (prctl PR_CAPBSET_DROP), which takes them away at the exec.
LIMITED = """
import ctypes, os, resource, signal, sys
kind, value, *command = sys.argv[1:]
if kind == "fsize":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(value), int(value)))
elif kind == "permissions" and os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            print(f"prctl(PR_CAPBSET_DROP) failed: errno {ctypes.get_errno()}", file=sys.stderr)
            sys.exit(77)
os.execv(command[0], command)
"""


def run_train(workdir, *extra: str, limit: tuple[str, str] | None = None):
    """`python -m jaxguard.train` on the toy config; `limit` is `LIMITED`'s `(kind, value)`."""
    prefix = [sys.executable, "-c", LIMITED, *limit] if limit else []
    return subprocess.run(
        prefix + command(workdir, *extra),
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def error_lines(stderr: str) -> list[str]:
    """The stderr lines that are not the run's progress (its epoch and set-up lines)."""
    progress = ("epoch ", "toy_task: ")
    return [line for line in stderr.splitlines() if not line.startswith(progress)]


def test_a_full_disk_ends_in_one_line_and_the_resume_finishes_the_run(reference, tmp_path):
    """Files stop at 8000 bytes: the event file reaches it at epoch 2, after two checkpoints."""
    result = run_train(tmp_path, limit=("fsize", "8000"))
    assert result.returncode == 1, result.stderr
    # tensorboard/ with tensorboardX 2.6 (its event file names no path of its own).
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"error: {tmp_path}") and line.endswith(": File too large"), line
    assert committed_steps(str(tmp_path / "checkpoints" / "latest"))  # Kept, and used:
    resumed = run_train(tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert outputs(tmp_path) == outputs(reference)


def test_a_workdir_without_write_permission_is_one_line_and_exit_1(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir(mode=0o555)
    result = run_train(workdir, limit=("permissions", "-"))
    if result.returncode == 77:
        pytest.skip(
            f"root without CAP_SETPCAP cannot give up its permission bypass: {result.stderr}"
        )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"error: {workdir / 'config.json.tmp'}: Permission denied"
    ]


def test_a_missing_data_file_is_one_line_naming_the_key_and_the_path(tmp_path, capsys):
    """A data file the config names is checked before training starts; missing, it is an I/O
    failure (exit 1) named with its key."""
    missing = str(tmp_path / "fields.npz")
    argv = ["--cfg", "cvae", f"--cfg.data.source={missing}", "--workdir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    assert info.value.code == 1
    assert capsys.readouterr().err == f"error: data.source {missing}: no such file\n"
    assert not os.path.exists(tmp_path / "run" / "checkpoints")  # Nothing that blocks a rerun.
