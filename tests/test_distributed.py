"""Several processes, one run: 2 real processes on localhost (CPU, gloo) against 1 x 4 devices."""

import csv
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxguard import batching, distributed
from jaxguard.config import ConfigError

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
TOY = os.path.join(TESTS, "toy_config.py")
METRICS = ("r2", "mae", "rmse", "std_ratio", "loss")


def environment(devices: int) -> dict[str, str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": TESTS}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.pop("JAXGUARD_TEST_PAUSE_AT", None)
    return env


# One process with 4 devices: the reference runs (3 and 5 epochs, uninterrupted) and the resume
# of the 2-process run to 5 epochs, in one interpreter. Prints the three summaries as JSON.
REFERENCE_SCRIPT = """
import io, json, os, sys
import jax
from jaxguard import config as config_lib, trainer
from jaxguard.writers import Console
toy, root, resumed = sys.argv[1:]
quiet = Console(io.StringIO(), progress=False)
def run(epochs, workdir, resume=False):
    config = config_lib.load_config(toy, [f"train.epochs={epochs}"])
    return trainer.train_and_evaluate(config, workdir, resume=resume, console=quiet)
summaries = {
    "devices": jax.device_count(),
    "three": run(3, os.path.join(root, "ref3")),
    "five": run(5, os.path.join(root, "ref5")),
    "resumed": run(5, resumed, resume=True),
}
print(json.dumps(summaries))
"""


def read_log(workdir: str) -> list[dict[str, str]]:
    with open(os.path.join(workdir, "log.csv")) as f:
        return list(csv.DictReader(f))


def assert_same_metrics(got: dict, want: dict) -> None:
    for key in METRICS:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


def assert_same_logs(got: list[dict], want: list[dict]) -> None:
    assert [row["epoch"] for row in got] == [row["epoch"] for row in want]
    for a, b in zip(got, want, strict=True):
        for key in ("step", "train_loss", "val_loss", "val_r2", "val_mae"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-6), key


def test_two_processes_match_four_devices_write_once_and_resume_on_one(tmp_path):
    workdir = str(tmp_path / "two")
    launched = subprocess.run(
        [sys.executable, "-m", "jaxguard.distributed", "--processes", "2", "--"]
        + ["--cfg", TOY, "--cfg.train.epochs=3", "--workdir", workdir],
        env=environment(2),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert launched.returncode == 0, launched.stderr[-2000:]
    two = json.load(open(os.path.join(workdir, "test_metrics.json")))
    two_log = read_log(workdir)
    # One writer: one row per epoch, one TensorBoard run (one event file, hparams inside).
    assert [row["epoch"] for row in two_log] == ["0", "1", "2"]
    board = os.listdir(os.path.join(workdir, "tensorboard"))
    assert len(board) == 1 and board[0].startswith("events.out.tfevents"), board
    # Every line of the run's console appears once: process 1 is silent.
    assert launched.stderr.count("done in ") == 1
    assert launched.stderr.count("epoch 2 | ") == 1
    report = open(os.path.join(workdir, "report.txt")).read()
    assert report.count("best epoch") == 1 and f"{two['test']['r2']:.4f}" in report
    # Both processes took part in every checkpoint: one commit per epoch, whole.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == ["16", "24"]

    reference = subprocess.run(
        [sys.executable, "-c", REFERENCE_SCRIPT, TOY, str(tmp_path), workdir],
        env=environment(4),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert reference.returncode == 0, reference.stderr[-2000:]
    runs = json.loads(reference.stdout.strip().splitlines()[-1])
    assert runs["devices"] == 4
    assert two["test"]["count"] == runs["three"]["test"]["count"] == 64
    assert_same_metrics(two["test"], runs["three"]["test"])
    assert_same_logs(two_log, read_log(str(tmp_path / "ref3")))
    # The 2-process checkpoint resumed by 1 process with 4 devices: as if never interrupted.
    assert runs["resumed"]["epochs_run"] == 5
    assert_same_metrics(runs["resumed"]["test"], runs["five"]["test"])
    assert_same_logs(read_log(workdir), read_log(str(tmp_path / "ref5")))


def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path):
    workdir = str(tmp_path / "signalled")
    address = f"127.0.0.1:{distributed.free_port()}"
    args = ["--cfg", TOY, "--workdir", workdir]
    # Process 1 waits after its 3rd step for a signal; process 0 gets none and runs on.
    paused = {**environment(2), "JAXGUARD_TEST_PAUSE_AT": "step:3"}
    processes = [
        subprocess.Popen(
            distributed.process_command(args, address, 2, index),
            env=paused if index else environment(2),
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    try:
        for line in processes[1].stderr:
            if line.startswith("JAXGUARD_TEST_PAUSED"):
                break
        processes[1].send_signal(signal.SIGTERM)
        errors = [process.communicate(timeout=120)[1] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [143, 143], errors
    # One mid-epoch checkpoint both saved, and one resume line (from process 0, without the
    # process flags: relaunch the processes with --resume, with any process count).
    assert os.listdir(os.path.join(workdir, "checkpoints", "latest")) == ["3"]
    assert "interrupted by SIGTERM: checkpoint at step 3 (epoch 0)" in errors[0]
    assert "resume with:" not in errors[1] and "--process_id" not in errors[0]


def test_process_flags_are_split_from_the_train_arguments():
    argv = ["--cfg", "toy", "--coordinator_address", "10.0.0.1:1234", "--num_processes=2"]
    flags, rest = distributed.split_flags([*argv, "--process_id", "1", "--cfg.optim.lr=3"])
    assert flags == distributed.ProcessFlags("10.0.0.1:1234", 2, 1)
    assert rest == ["--cfg", "toy", "--cfg.optim.lr=3"]
    assert distributed.split_flags(["--cfg", "toy"]) == (
        distributed.ProcessFlags(),
        ["--cfg", "toy"],
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (distributed.ProcessFlags("h:1", 2, None), "go together; missing --process_id"),
        (distributed.ProcessFlags(None, 2, 0), "missing --coordinator_address"),
        (distributed.ProcessFlags("h:1", 2, 2), r"--process_id 2 is not in 0..1"),
        (distributed.ProcessFlags("h", 2, 0), "--coordinator_address 'h' is not HOST:PORT"),
    ],
)
def test_incomplete_or_inconsistent_process_flags_are_one_line(flags, message):
    with pytest.raises(ConfigError, match=message):
        distributed.initialize(flags, environ={})


def test_one_process_by_flag_or_launcher_stays_a_plain_run():
    assert not distributed.initialize(distributed.ProcessFlags("h:1", 1, 0), environ={})
    assert not distributed.initialize(
        distributed.ProcessFlags(), environ={"SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}
    )
    assert jax.process_count() == 1 and distributed.is_writer()


def test_launcher_environments_give_the_process_count():
    assert distributed.launcher_processes({}) == 1
    srun = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8", "SLURM_PROCID": "3"}
    assert distributed.launcher_processes(srun) == 8
    # A batch script's own shell (no srun step) is one process, whatever the job's tasks.
    assert distributed.launcher_processes({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}) == 1
    env = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "0"}
    assert distributed.launcher_processes(env) == 4


def test_one_process_reads_arrays_locally_and_keeps_its_own_signal():
    batch_sharding, replicated = batching.data_sharding()
    x = np.arange(8.0 * jax.device_count()).reshape(-1, 2)
    placed = batching.place_batch({"x": x}, batch_sharding, replicated)["x"]
    np.testing.assert_array_equal(distributed.host_value(placed), x)
    state = {"w": np.ones(3, np.float32), "key": jax.random.key(7)}
    on_all = distributed.replicate(state, replicated)
    assert on_all["w"].sharding == replicated and on_all["key"].sharding == replicated
    np.testing.assert_array_equal(
        jax.random.key_data(on_all["key"]), jax.random.key_data(state["key"])
    )
    assert distributed.local_tree(on_all)["w"] is on_all["w"]
    assert distributed.agree_on_signal(15) == 15 and distributed.agree_on_signal(None) is None


def test_each_process_launched_locally_gets_the_coordinator_and_its_id():
    command = distributed.process_command(["--cfg", "toy"], "127.0.0.1:5", 2, 1)
    assert command[1:] == [
        "-m",
        "jaxguard.train",
        "--cfg",
        "toy",
        "--coordinator_address",
        "127.0.0.1:5",
        "--num_processes",
        "2",
        "--process_id",
        "1",
    ]
