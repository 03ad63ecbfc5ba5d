"""Several processes, one run: starting `jax.distributed`, the one writing process, host reads.

A multi-process run is one program started once per process (per host, or per GPU); the
processes meet through `jax.distributed.initialize`, after which `jax.devices()` lists every
process's devices and a jitted step runs on all of them. This module holds what that changes:

* `initialize(flags)`: starts `jax.distributed` from explicit flags (`--coordinator_address
  HOST:PORT --num_processes N --process_id I`), or from the launcher's environment (an srun
  step with more than one task, Open MPI with more than one rank: JAX's own detection reads the
  coordinator, the count and the rank), and leaves a plain single-process run alone;
* `is_writer()`: process 0 writes every file (logs, CSV, TensorBoard, reports, guard events,
  config.json); checkpoints are written by all processes together (orbax);
* `host_value` / `host_tree`: the global value of an array on every process, for arrays that
  span devices of other processes (`np.asarray` refuses those); `local_tree` the same as arrays
  this process can compute on alone; `replicate` puts a host value on every device of the run;
* `agree_on_signal`: the processes agree on a pending SIGTERM/SIGINT, so they all stop at the
  same step and save the same checkpoint together;
* `main`: a local launcher, `python -m jaxguard.distributed --processes 2 -- --cfg ...`.

On CPU, cross-process collectives use gloo (JAX's default `jax_cpu_collectives_implementation`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from jaxguard.config import ConfigError
from jaxguard.writers import Console

# Launchers whose environment means "one of several processes", as (count variable, rank
# variable): JAX's cluster detection then reads the coordinator, the count and the rank.
LAUNCHER_ENV = (
    # Set by srun for the tasks of a step; not in a batch script's own shell, whose python
    # (started without srun) is one process even when the job has several tasks.
    ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID"),
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),  # mpirun (Open MPI)
)


@dataclasses.dataclass(frozen=True)
class ProcessFlags:
    """The explicit `--coordinator_address`, `--num_processes` and `--process_id` (or None)."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def given(self) -> bool:
        return any(value is not None for value in dataclasses.astuple(self))


def flag_parser() -> argparse.ArgumentParser:
    """The process flags `python -m jaxguard.train` takes besides the config's."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--coordinator_address", metavar="HOST:PORT", help="Process 0's address (every process)."
    )
    parser.add_argument("--num_processes", type=int, metavar="N", help="Processes in the run.")
    parser.add_argument("--process_id", type=int, metavar="I", help="This process, 0..N-1.")
    return parser


def split_flags(argv: Sequence[str]) -> tuple[ProcessFlags, list[str]]:
    """`(process flags, the other arguments)` of a `python -m jaxguard.train` command line."""
    known, rest = flag_parser().parse_known_args(list(argv))
    return ProcessFlags(known.coordinator_address, known.num_processes, known.process_id), rest


def launcher_processes(environ: Mapping[str, str]) -> int:
    """How many processes the launcher's environment says the run has (1 when none says so)."""
    for count, rank in LAUNCHER_ENV:
        if rank in environ and environ.get(count, "").isdigit():
            return int(environ[count])
    return 1


def check_flags(flags: ProcessFlags) -> None:
    """Raises `ConfigError` (one line) unless the flags are all given and consistent."""
    missing = [f"--{f.name}" for f in dataclasses.fields(flags) if getattr(flags, f.name) is None]
    if missing:
        raise ConfigError(
            "--coordinator_address, --num_processes and --process_id go together; missing "
            + ", ".join(missing)
        )
    if flags.num_processes < 1 or not 0 <= flags.process_id < flags.num_processes:
        raise ConfigError(
            f"--process_id {flags.process_id} is not in 0..{flags.num_processes - 1} "
            f"(--num_processes {flags.num_processes})"
        )
    host, _, port = flags.coordinator_address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--coordinator_address {flags.coordinator_address!r} is not HOST:PORT")


def initialize(flags: ProcessFlags, environ: Mapping[str, str] = os.environ) -> bool:
    """Starts `jax.distributed` when the flags or the launcher ask for several processes.

    Must run before the first JAX computation. Returns whether it started; a single-process
    run (no flags, no launcher with more than one process) is left exactly as it was.
    """
    if flags.given():
        check_flags(flags)
        if flags.num_processes == 1:
            return False
        jax.distributed.initialize(flags.coordinator_address, flags.num_processes, flags.process_id)
        return True
    if launcher_processes(environ) > 1:
        jax.distributed.initialize()  # JAX reads coordinator, count and rank from the launcher.
        return True
    return False


def is_writer() -> bool:
    """Whether this process writes the run's files: process 0 (the only one when alone)."""
    return jax.process_index() == 0


def silent() -> Console:
    """The console of a process that does not write: its lines are process 0's, already shown."""
    return Console(open(os.devnull, "w"), progress=False)  # noqa: SIM115 (lives as long as the run)


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (nothing to wait for when alone)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def replicate(tree: Any, replicated: NamedSharding) -> Any:
    """`tree` on every device of `replicated`, from a value every process holds the same.

    Leaves already placed so stay as they are; PRNG keys are placed as their raw data (a
    sharding over other processes' devices takes host values, which keys have none of).
    """

    def put(leaf):
        if isinstance(leaf, jax.Array) and leaf.sharding == replicated:
            return leaf
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return jax.device_put(host_value(leaf), replicated)

    return jax.tree.map(put, tree)


def host_value(array: Any) -> np.ndarray:
    """The whole value of `array` as NumPy on this process, whichever devices hold it.

    An array on this process's devices, or one replicated on every device, is read locally;
    one split over devices of several processes is gathered from them (a collective: every
    process must call this for the same array).
    """
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        if array.is_fully_replicated:
            return np.asarray(array.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def local_array(array: Any) -> Any:
    """`array` if this process holds all of it, else its whole value on this process's device.

    Keeps the dtype (PRNG keys included), so a tree of them still fits the jitted functions.
    """
    if not isinstance(array, jax.Array) or array.is_fully_addressable:
        return array
    if array.is_fully_replicated:
        return array.addressable_data(0)
    return jnp.asarray(multihost_utils.process_allgather(array, tiled=True))


def host_tree(tree: Any) -> Any:
    """`host_value` of every leaf."""
    return jax.tree.map(host_value, tree)


def local_tree(tree: Any) -> Any:
    """`local_array` of every leaf: a tree this process can compute on alone."""
    return jax.tree.map(local_array, tree)


def agree_on_signal(signum: int | None) -> int | None:
    """The signal any process received (the highest number), the same on every process.

    One process alone stopping would leave the others waiting in a collective (the next step,
    the checkpoint), so with several processes each step ends with this small all-gather.
    """
    if jax.process_count() == 1:
        return signum
    received = multihost_utils.process_allgather(np.int32(signum or 0))
    highest = int(np.max(received))
    return highest or None


# ----------------------------------------------------------------------------- local launcher


# Seconds the other processes of a local launch get to finish after one of them failed.
FAILURE_GRACE_S = 10.0


def free_port() -> int:
    """A TCP port nobody listens on now, for the coordinator of a local launch."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_command(train_args: Sequence[str], address: str, count: int, index: int) -> list[str]:
    """The command line of process `index` of a local launch of `python -m jaxguard.train`."""
    return [
        sys.executable,
        "-m",
        "jaxguard.train",
        *train_args,
        "--coordinator_address",
        address,
        "--num_processes",
        str(count),
        "--process_id",
        str(index),
    ]


def launch(train_args: Sequence[str], processes: int, port: int | None = None) -> int:
    """Runs `processes` copies of `python -m jaxguard.train ARGS` on this machine; waits.

    SIGTERM and SIGINT are passed on to every process (they stop together at the same step).
    When one process fails, the others, which would wait for it in their next collective, are
    killed after `FAILURE_GRACE_S`. Returns the first non-zero exit code, else 0.
    """
    address = f"127.0.0.1:{port or free_port()}"
    children = [
        subprocess.Popen(process_command(train_args, address, processes, index))
        for index in range(processes)
    ]

    def forward(signum, frame):
        del frame
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        failed_at = None
        while any(child.poll() is None for child in children):
            if failed_at is None and any(child.poll() for child in children):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > FAILURE_GRACE_S:
                for child in children:
                    if child.poll() is None:
                        child.kill()
            time.sleep(0.1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return next((child.returncode for child in children if child.returncode), 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxguard.distributed",
        description="Run python -m jaxguard.train as several processes on this machine.",
        epilog="Example: python -m jaxguard.distributed --processes 2 -- --cfg optical_depth "
        "--workdir runs/od2",
    )
    parser.add_argument("--processes", type=int, required=True, help="How many processes.")
    parser.add_argument("--port", type=int, help="Coordinator port (default: a free one).")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the train args.")
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if args.processes < 1:
        parser.error(f"--processes {args.processes} must be at least 1")
    return launch(train_args, args.processes, args.port)


if __name__ == "__main__":
    sys.exit(main())
