"""Task definitions: data, model and loss for each jaxguard task.

A task is a module with the hooks `jaxguard.trainer` calls: `make_splits`,
`make_model`, `make_loss`, `config_warnings`, `forward`, `loss_inputs`,
`empty_metrics`, `update_metrics`, `head`, `histograms`, `collapse_arrays`,
`prediction_table`, `report_lines`, `pretrain`, and the tuples `EPOCH_LINE`
and `DIAGNOSTIC_KEYS`. `TASKS` below is the registry of valid `config.task` names.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

TASKS = {
    "optical_depth": "jaxguard.tasks.optical_depth.task",
}


def get_task(name: str) -> ModuleType:
    """The task module registered as `name`; a one-line error lists the valid names."""
    if name not in TASKS:
        from jaxguard.config import ConfigError

        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"task: unknown task {name!r}{hint}; valid tasks: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])
