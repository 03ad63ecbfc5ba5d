"""Audit a task's data before training: `python -m jaxguard.audit --cfg configs/NAME.py`.

Takes the same command line as `jaxguard.train` (`--cfg PATH[:VARIANT]`,
`--cfg.KEY=VALUE` overrides; `--workdir` and `--resume` are accepted and
unused), builds the splits with the task's `make_splits(config)` and prints what
the task's `audit` hook finds in them: class balance, target distribution,
foreground or extreme fractions, with the loss settings that would counter an
imbalance. Nothing is trained or written.

The hook (optional in a task module, see `jaxguard.tasks`)::

    def audit(config: ConfigDict, splits: dict[str, dict[str, np.ndarray]]) -> list[str] | dict

returns either
  * a list of report lines, printed as they are, or
  * a dict `{section: figures}`, where a section is usually a split name
    ("train", "val", "test") and `figures` is either a dict `{name: number or str}`,
    printed as one line `section: name=value, ...` (floats with 4 significant
    digits), or a list of lines, printed under the heading `section:` (e.g. a
    "recommendations" section).

A task without the hook gets `task NAME has no audit` and exit code 2 from the
command line (a `ConfigError` from `run_audit`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ml_collections import ConfigDict

from jaxguard import config as config_lib


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_report(result: list[str] | Mapping[str, Any]) -> list[str]:
    """The printed lines of an audit hook's result (see the module docstring)."""
    if not isinstance(result, Mapping):
        return [str(line) for line in result]
    lines = []
    for section, figures in result.items():
        if isinstance(figures, Mapping):
            body = ", ".join(f"{name}={_format_value(v)}" for name, v in figures.items())
            lines.append(f"{section}: {body}")
        else:
            lines.append(f"{section}:")
            lines.extend(f"  {line}" for line in figures)
    return lines


def run_audit(config: ConfigDict) -> list[str] | dict:
    """Builds the splits of `config` and returns its task's audit result.

    Raises:
      ConfigError: the config is invalid.
    """
    task = config_lib.task_of(config)
    return task.audit(config, task.make_splits(config))


def main(argv: Sequence[str] | None = None) -> list[str]:
    args, overrides = config_lib.parse_cli(
        sys.argv[1:] if argv is None else argv,
        prog="python -m jaxguard.audit",
        description="Report a task's class balance and target distribution per split.",
    )
    config = config_lib.load_config(args.cfg, overrides)
    lines = [f"audit of {config.task} ({args.cfg})", *format_report(run_audit(config))]
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    config_lib.exit_on_config_error(main)
