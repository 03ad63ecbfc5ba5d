"""Train a task: `python -m jaxguard.train --cfg configs/optical_depth.py [--workdir D] [--resume]`.

`--cfg` takes a config file, `cfgs/NAME.py` or a bundled name, optionally with a
variant (`configs/optical_depth.py:run3`); `--cfg.KEY=VALUE` overrides a key
(`--cfg.optim.lr=3e-4`). Everything else lives in `jaxguard.trainer.train_and_evaluate`.

Every failure ends with one line on stderr (`--debug` shows the traceback instead) and
an exit code:

* 2: a config mistake (the key named), or a resume the config change does not allow;
* 1: an I/O failure (the path and the cause: a missing data file, a full disk, a permission
  error) or no checkpoint that restores;
* 143 (SIGTERM) or 130 (SIGINT): the run stopped after the current train step, saved a
  checkpoint and printed the command that resumes it. A second signal exits at once.

Before training, host memory is tuned for XLA:CPU (`jaxguard.host_memory`;
`JAXGUARD_HOST_ALLOCATOR=default` keeps glibc's and JAX's defaults).

Several processes (docs/scaling.md): started by SLURM (`srun`, more than one task) or Open MPI
(`mpirun`), each process joins the others through `jax.distributed` by itself; started any
other way, each takes `--coordinator_address HOST:PORT --num_processes N --process_id I`
(`python -m jaxguard.distributed --processes N -- ARGS` starts N on this machine). Every
process needs the same `--workdir`, on a filesystem they all see; process 0 writes the logs.
Without either, the program is a single process, as always.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Sequence

import jax

from jaxguard import config as config_lib
from jaxguard import distributed, host_memory, trainer
from jaxguard.checkpoints import CheckpointError
from jaxguard.loop import Interrupt, RunInterrupted

CONFIG_ERROR_EXIT = 2
RUN_ERROR_EXIT = 1


def main(argv: Sequence[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    flags, rest = distributed.split_flags(argv)
    args, overrides = config_lib.parse_cli(
        rest,
        prog="python -m jaxguard.train",
        description="Train a jaxguard task with its guards, logs, checkpoints and report.",
        debug_flag=True,
    )
    try:
        distributed.initialize(flags)
        return train(args, overrides, rest)  # A resume command without the process flags.
    except (config_lib.ConfigError, CheckpointError, OSError) as error:
        if args.debug:
            raise
        print(f"error: {error_line(error)}", file=sys.stderr)
        is_config = isinstance(error, config_lib.ConfigError) and not isinstance(
            error, config_lib.MissingInputError
        )
        sys.exit(CONFIG_ERROR_EXIT if is_config else RUN_ERROR_EXIT)


def train(args, overrides: list[str], argv: list[str]) -> dict:
    """Loads the config and trains, stopping cleanly at SIGTERM/SIGINT (see module doc)."""
    config = config_lib.load_config(args.cfg, overrides)
    # After the config is known good, before the first JAX computation (see host_memory).
    host_memory.tune_host_allocator_from_env()
    workdir = args.workdir or config.workdir
    if not workdir and jax.process_count() > 1:
        raise config_lib.ConfigError(
            f"{jax.process_count()} processes need --workdir (the same folder for all, on a "
            "filesystem they all see)"
        )
    workdir = workdir or trainer.default_workdir(config)
    interrupt = Interrupt()
    with interrupt.installed():
        try:
            return trainer.train_and_evaluate(
                config, workdir, resume=args.resume, interrupt=interrupt
            )
        except OSError as error:
            error.filename = error.filename or workdir  # A write to an open file names no path.
            raise
        except RunInterrupted as stopped:
            name = signal.Signals(stopped.signum).name
            if distributed.is_writer():  # The others stopped at the same step.
                print(
                    f"interrupted by {name}: {stopped.saved}; resume with: "
                    f"{resume_command(argv, workdir)}",
                    file=sys.stderr,
                    flush=True,
                )
            sys.exit(stopped.exit_code)


def resume_command(argv: Sequence[str], workdir: str) -> str:
    """The command line that continues this run: the same arguments, `--workdir`, `--resume`."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--workdir":
            skip = True
        elif token != "--resume" and not token.startswith("--workdir="):
            kept.append(token)
    return shlex.join(["python", "-m", "jaxguard.train", *kept, "--workdir", workdir, "--resume"])


def error_line(error: Exception) -> str:
    """One line for a failure: the message, or for an OSError the path and the cause."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    try:
        main()
    except SystemExit as done:
        if done.code != RUN_ERROR_EXIT:
            raise
        # After an I/O failure, tensorboardX's exit hook and writer thread would retry the
        # failed file and print tracebacks under the one-line error: leave without them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(RUN_ERROR_EXIT)
