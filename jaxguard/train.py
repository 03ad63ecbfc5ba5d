"""Train a task: `python -m jaxguard.train --cfg configs/optical_depth.py [--workdir D] [--resume]`.

`--cfg` takes a config file, `cfgs/NAME.py` or a bundled name, optionally with a
variant (`configs/optical_depth.py:run3`); `--cfg.KEY=VALUE` overrides a key
(`--cfg.optim.lr=3e-4`). A config mistake exits with code 2 and one line naming
the key. Everything else lives in `jaxguard.trainer.train_and_evaluate`.

Before training, host memory is tuned for XLA:CPU (`jaxguard.host_memory`;
`JAXGUARD_HOST_ALLOCATOR=default` keeps glibc's and JAX's defaults).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jaxguard import config as config_lib
from jaxguard import host_memory, trainer


def main(argv: Sequence[str] | None = None) -> dict:
    args, overrides = config_lib.parse_cli(
        sys.argv[1:] if argv is None else argv,
        prog="python -m jaxguard.train",
        description="Train a jaxguard task with its guards, logs, checkpoints and report.",
    )
    config = config_lib.load_config(args.cfg, overrides)
    # After the config is known good, before the first JAX computation (see host_memory).
    host_memory.tune_host_allocator_from_env()
    return trainer.train_and_evaluate(config, args.workdir, resume=args.resume)


if __name__ == "__main__":
    config_lib.exit_on_config_error(main)
