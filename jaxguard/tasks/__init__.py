"""The task registry: `config.task` name -> the package whose `TASK` the harness runs.

Each package builds one `jaxguard.tasks.contract.Task` and exports it as `TASK`. To add a
task, copy a task folder and add one line to `TASKS` (docs/adding_a_task.md). A task that
lives outside jaxguard is named by its module path instead (`config.task = "mylab.tasks.toy"`):
any importable module that exports a `Task` as `TASK`.
"""

from __future__ import annotations

import difflib
import importlib

from jaxguard.tasks.contract import Task

TASKS = {
    "optical_depth": "jaxguard.tasks.optical_depth",
    "cvae": "jaxguard.tasks.cvae",
    "surface": "jaxguard.tasks.surface",
    "pointer": "jaxguard.tasks.pointer",
}


class UnknownTaskError(ValueError):
    """`config.task` names no registered task and no importable module with a `TASK`."""


def get_task(name: str) -> Task:
    """The `Task` registered as `name`, else the `TASK` of the module named `name`.

    Raises:
      UnknownTaskError: one line listing the valid names (with the closest one).
    """
    try:
        module = importlib.import_module(TASKS.get(name, name))
    except ModuleNotFoundError as error:
        if name in TASKS or error.name != name.split(".")[0]:
            raise  # The task exists but something it imports is missing: a real error.
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UnknownTaskError(
            f"task: unknown task {name!r}{hint}; valid tasks: {', '.join(TASKS)}, or the path "
            "of a module that exports TASK"
        ) from None
    task = getattr(module, "TASK", None)
    if not isinstance(task, Task):
        raise UnknownTaskError(
            f"task: module {module.__name__} exports no TASK (a jaxguard.tasks.contract.Task)"
        )
    return task
