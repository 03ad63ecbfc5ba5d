"""Run configs: find the file, build it, hold it to the shared schema, apply command-line overrides.

A run is named by `--cfg PATH[:VARIANT]`: a Python file whose `get_config(arg=None)` returns an
`ml_collections.ConfigDict` built on `jaxguard.configs.base.get_config()`. `load_config` imports
the file, checks the shared sections (everything except the task-owned `data`, `model` and
`loss`) against the base schema, locks the config, applies `--cfg.KEY=VALUE` overrides and runs
`validate`. Every mistake is a `ConfigError` with a one-line message naming the key, the file or
the variant, so a typo fails before anything is compiled.

Command-line entry points share one pattern::

    def main(argv: Sequence[str] | None = None) -> None:
        args, overrides = parse_cli(
            sys.argv[1:] if argv is None else argv, prog="python -m jaxguard.train"
        )
        config = load_config(args.cfg, overrides)
        ...

    if __name__ == "__main__":
        exit_on_config_error(main)
"""

import argparse
import ast
import difflib
import fnmatch
import importlib.util
import inspect
import itertools
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, ParamSpec, TypeVar

from ml_collections import config_dict

import jaxguard.configs
from jaxguard import tasks
from jaxguard.configs import base
from jaxguard.guards import MonitorExpression, parse_watched
from jaxguard.guards.base import MODES

TASK_SECTIONS = ("data", "model", "loss")  # Filled freely by each task config; not in the schema.
# Sections of `guard` every run has; a task config adds its own guards' (Task.guard_names).
SHARED_GUARDS = (
    "early_stopping",
    "collapse",
    "ensemble_spread",
    "best",
    "nonfinite",
    "volatility",
    "disagreement",
    "overfitting",
    "loss_terms",
    "warmup",
)
# Keys that moved or went away: a config or override that still uses one gets this line.
MOVED_KEYS = {
    "model.collapse_guard": "moved to guard.active_units",
    "model.volatility_warn_change": "moved to guard.volatility.max_jump",
    "guard.volatility.warn_change": "moved to guard.volatility.max_jump (a shared guard now)",
    "loss.plateau_guard": "moved to guard.plateau",
    "loss.majority_guard": "moved to guard.majority_class",
    "model.head_grad_band": "moved to guard.head_gradient_band.band",
    "model.done_guard_patience": "moved to guard.done_never_predicted.patience",
    "eval.every_epochs": "was removed: every epoch is evaluated",
    "ckpt.every_epochs": "was removed: every epoch is checkpointed",
}
# Keys a resumed run may change (`fnmatch` patterns); any other change is refused, since it
# would change the data, the model, the saved arrays or the meaning of the guards' states.
RESUMABLE_KEYS = (
    "workdir",
    "train.epochs",
    "optim.lr",
    "guard.*.patience",
    "eval.batch_size",
    "log.*",
    "ckpt.*",
)
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine")
MONITOR_MODES = MODES  # The guards' own: "min" or "max".

_CONFIG_FOLDER_NAMES = ("configs", "cfgs")  # `cfgs/NAME.py` is an accepted alias of configs/.
_OVERRIDE_PREFIXES = ("--cfg.", "cfg.")
_NOT_RUNS = ("base", "__init__")  # Modules in the bundled folder that are not run configs.
_module_ids = itertools.count()

_P = ParamSpec("_P")
_R = TypeVar("_R")


class ConfigError(Exception):
    """A config that cannot run: bad path, variant, key, type or value. Its str() is one line."""

    def __init__(self, message: str) -> None:
        # One line whatever the pieces hold (reprs, library messages), so CLIs print one line.
        super().__init__(" ".join(message.split()))


class MissingInputError(ConfigError):
    """A data file or folder the config names does not exist.

    Found while the config is checked, before anything is built, and named with its key like
    any config mistake, but an I/O failure to the CLIs (exit 1, as a full disk or a permission
    error): the setting may be right and the file not there yet.
    """


class _Field(NamedTuple):
    """The type a config key takes, and whether None is allowed (a placeholder)."""

    expected: type
    nullable: bool


# ----------------------------------------------------------------------------- locating configs


def bundled_config_dir() -> Path:
    """The folder of the configs shipped as the package `jaxguard.configs`.

    In a checkout that is the top-level configs/ folder; in an installed wheel, its copy inside
    site-packages.
    """
    return Path(jaxguard.configs.__file__).parent


def _bundled_config_names() -> list[str]:
    return sorted(
        path.stem for path in bundled_config_dir().glob("*.py") if path.stem not in _NOT_RUNS
    )


def _bundled_config_listing() -> str:
    return ", ".join(_bundled_config_names()) or "none"


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    matches = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {matches[0]}?)" if matches else ""


def resolve_config_path(spec: str) -> tuple[Path, str | None]:
    """Finds the config file and the variant named by `spec` = `PATH[:VARIANT]`.

    In order: an existing file path wins (even one with a ':' in its name); `configs/NAME.py` and
    its alias `cfgs/NAME.py` are looked up under ./configs, then in the bundled configs; a bare
    `NAME` or `NAME.py` is a bundled config. The variant is what follows the last ':' when it holds
    no path separator.

    Returns:
        The absolute path of the config file and the variant, or None when there is none.

    Raises:
        ConfigError: no such file or bundled config, an empty variant, or not a `.py` file.
    """
    if Path(spec).is_file():
        return _python_file(Path(spec)), None
    path_text, separator, variant = spec.rpartition(":")
    if not separator or "/" in variant or os.sep in variant:
        return _find_config_file(spec), None
    if not variant or not path_text:
        raise ConfigError(f"--cfg {spec}: expected PATH[:VARIANT], both non-empty")
    return _find_config_file(path_text), variant


def _find_config_file(path_text: str) -> Path:
    path = Path(path_text)
    if path.is_file():
        return _python_file(path)
    parts = path.parts
    if len(parts) > 1 and parts[0] in _CONFIG_FOLDER_NAMES:
        candidates = (Path("configs", *parts[1:]), bundled_config_dir().joinpath(*parts[1:]))
        for candidate in candidates:
            if candidate.is_file():
                return _python_file(candidate)
        raise ConfigError(
            f"config {path_text} not found in ./configs nor in the bundled configs "
            f"({_bundled_config_listing()})"
        )
    if len(parts) == 1:
        name = path_text.removesuffix(".py")
        candidate = bundled_config_dir() / f"{name}.py"
        if candidate.is_file():
            return _python_file(candidate)
        raise ConfigError(
            f"no config file or bundled config named {path_text}"
            f"{_did_you_mean(name, _bundled_config_names())}; "
            f"bundled configs: {_bundled_config_listing()}"
        )
    raise ConfigError(f"config file {path_text} not found")


def _python_file(path: Path) -> Path:
    if path.suffix != ".py":
        raise ConfigError(
            f"config {path} is not a Python config file (a saved config.json is a record of a "
            "run, not an input)"
        )
    return path.resolve()


# ----------------------------------------------------------------------------- loading


def load_config(spec: str, overrides: Sequence[str] = ()) -> config_dict.ConfigDict:
    """Builds, checks, locks, overrides and validates the config named by `spec`.

    Args:
        spec: `PATH[:VARIANT]`, see `resolve_config_path`.
        overrides: `KEY=VALUE` strings, optionally prefixed `--cfg.` or `cfg.`. VALUE is read as a
            Python literal (`3e-4`, `5`, `None`, `(32, 64)`) or else kept as text (`sgd`); a
            str key always keeps the text as typed.

    Returns:
        The locked config: keys can be changed but not added.

    Raises:
        ConfigError: on anything `resolve_config_path`, the schema check, an override or
            `validate` rejects.
    """
    path, variant = resolve_config_path(spec)
    config = _build_config(path, variant)
    for key, _, _ in _leaves(config):
        _reject_moved_key(key, f"config {path} sets {key}")
    schema = {
        key: field
        for key, field in _field_types(base.get_config()).items()
        if not _is_task_owned(key)
    }
    _conform_to_schema(config, path, schema)
    config.lock()
    # Shared keys keep the schema's type; task-owned keys the type the task config gave them.
    fields = {key: field for key, field in _field_types(config).items() if _is_task_owned(key)}
    fields.update(schema)
    for override in overrides:
        _apply_override(config, override, fields)
    validate(config)
    task = task_of(config)
    _check_guard_sections(config, task)
    task.check_config(config)
    return config


def task_of(config: config_dict.ConfigDict) -> tasks.Task:
    """The `Task` of `config.task`; a ConfigError naming the valid tasks when there is none."""
    try:
        return tasks.get_task(config.task)
    except tasks.UnknownTaskError as error:
        raise ConfigError(str(error)) from None


def _reject_moved_key(key: str, where: str) -> None:
    for old, news in MOVED_KEYS.items():
        if key == old or key.startswith(old + "."):
            rest = key[len(old) :]  # A moved section keeps its keys: .enabled stays .enabled.
            target = f"{news}{rest}" if news.startswith("moved") else news
            raise ConfigError(f"{where}: {old}{rest} {target}")


def _check_guard_sections(config: config_dict.ConfigDict, task: tasks.Task) -> None:
    """`guard` holds the shared sections and those the task declares, nothing else."""
    known = [*SHARED_GUARDS, *task.guard_names]
    for name in config.guard:
        if name not in known:
            raise ConfigError(
                f"unknown guard section guard.{name}{_did_you_mean(name, known)}; task "
                f"{task.name} has guard sections {', '.join(known)}"
            )


def _build_config(path: Path, variant: str | None) -> config_dict.ConfigDict:
    module_name = f"_jaxguard_config_{next(_module_ids)}_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # Dataclasses and pickling look the module up by name.
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:
        raise ConfigError(f"config {path} line {error.lineno}: syntax error: {error.msg}") from None
    except Exception as error:  # Whatever the file's own code raises on import.
        raise ConfigError(
            f"config {path}{_config_line(error, path)}: {_error_name(error)}"
        ) from error
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config {path} defines no get_config()")
    if variant is not None and not _takes_positional_argument(get_config):
        raise ConfigError(f"config {path} has no variants (got :{variant})")
    try:
        config = get_config() if variant is None else get_config(variant)
    except (ValueError, KeyError) as error:
        if variant is None:
            raise ConfigError(
                f"config {path}{_config_line(error, path)}: {_error_name(error)}"
            ) from error
        raise ConfigError(
            f"config {path} has no variant {variant!r}: {_error_text(error)}"
        ) from error
    except TypeError as error:  # ConfigDict's type safety: `config.train.epochs = "ten"`.
        raise ConfigError(f"config {path}{_config_line(error, path)}: {error}") from error
    except Exception as error:  # Whatever else get_config() raises.
        raise ConfigError(
            f"config {path}{_config_line(error, path)}: {_error_name(error)}"
        ) from error
    if not isinstance(config, config_dict.ConfigDict):
        raise ConfigError(
            f"get_config() of {path} returned {type(config).__name__}, expected ConfigDict"
        )
    return config


def _takes_positional_argument(function: Callable) -> bool:
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    parameters = inspect.signature(function).parameters.values()
    return any(parameter.kind in positional for parameter in parameters)


def _error_text(error: Exception) -> str:
    # A KeyError's str() is the repr of its argument; the argument itself reads better.
    return str(error.args[0]) if len(error.args) == 1 else str(error)


def _error_name(error: Exception) -> str:
    """`Type: text` of an exception raised by a config file's own code."""
    return f"{type(error).__name__}: {_error_text(error)}"


def _config_line(error: Exception, path: Path) -> str:
    """` line N (source)` of the innermost frame of `error` in the config file, or ''."""
    frames = [
        frame for frame in traceback.extract_tb(error.__traceback__) if frame.filename == str(path)
    ]
    if not frames:
        return ""
    return f" line {frames[-1].lineno} ({frames[-1].line})"


# ----------------------------------------------------------------------------- keys and types


def _leaves(
    config: config_dict.ConfigDict, prefix: str = ""
) -> Iterator[tuple[str, config_dict.ConfigDict, str]]:
    """(dotted key, section, name in section) of every non-section value, depth first."""
    for name in config.keys():
        value = config[name]
        if isinstance(value, config_dict.ConfigDict):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", config, name


def flatten(config: config_dict.ConfigDict) -> dict[str, object]:
    """The config as `{dotted key: value}` over its settings (sections are not keys).

    References are resolved; e.g. `{"optim.lr": 0.001, "guard.early_stopping.patience": 10}`.
    Used to log and save hyper-parameters.
    """
    return {key: section[name] for key, section, name in _leaves(config)}


def _field_types(config: config_dict.ConfigDict) -> dict[str, _Field]:
    # A None value is a placeholder (or a plain None) and stays nullable.
    return {
        key: _Field(section.get_type(name), section[name] is None)
        for key, section, name in _leaves(config)
    }


def _is_task_owned(key: str) -> bool:
    """Task sections, and `guard.<name>.*` of a task's own guards (checked after loading)."""
    parts = key.split(".")
    return parts[0] in TASK_SECTIONS or (
        parts[0] == "guard" and len(parts) > 2 and parts[1] not in SHARED_GUARDS
    )


def _accepts(field: _Field, value: object) -> bool:
    """Whether `value` may be stored in `field`: ConfigDict's casts, minus bool-as-int and None."""
    if value is None:
        return field.nullable
    if field.expected is type(None):  # A plain None in a task section takes anything.
        return True
    if isinstance(value, bool) or field.expected is bool:
        return isinstance(value, bool) and field.expected is bool
    if field.expected is float:
        return isinstance(value, int | float)
    if field.expected in (list, tuple):  # ConfigDict converts one into the other.
        return isinstance(value, list | tuple)
    return isinstance(value, field.expected)


def _type_name(field: _Field) -> str:
    return field.expected.__name__ + (" or None" if field.nullable else "")


def _conform_to_schema(
    config: config_dict.ConfigDict, path: Path, schema: dict[str, _Field]
) -> None:
    """Shared sections must have exactly the base keys, with values of the base types.

    An int where the base has a float (`config.optim = ConfigDict({"lr": 1, ...})`) is stored as
    a float, so the key takes float overrides and downstream code sees one type.
    """
    leaves = {
        key: (section, name) for key, section, name in _leaves(config) if not _is_task_owned(key)
    }
    unknown = [key for key in leaves if key not in schema]
    if unknown:
        also = f"; also {', '.join(unknown[1:])}" if len(unknown) > 1 else ""
        raise ConfigError(
            f"config {path} sets unknown key {unknown[0]}{_did_you_mean(unknown[0], list(schema))}"
            f"{also}"
        )
    missing = [key for key in schema if key not in leaves]
    if missing:
        raise ConfigError(
            f"config {path} lacks key {missing[0]}: change base.get_config() values instead of "
            "replacing its sections"
        )
    for key, (section, name) in leaves.items():
        value = section[name]
        if not _accepts(schema[key], value):
            raise ConfigError(
                f"config {path} sets {key} = {value!r}: expected {_type_name(schema[key])}, "
                f"got {type(value).__name__}"
            )
        if schema[key].expected is float and isinstance(value, int):
            with section.ignore_type():  # Replaces the field's int type by float.
                section[name] = float(value)


# ----------------------------------------------------------------------------- overrides


def _apply_override(
    config: config_dict.ConfigDict, override: str, fields: dict[str, _Field]
) -> None:
    key, raw_value = _split_override(override)
    flag = f"--cfg.{key}"
    _reject_moved_key(key, flag)
    if key not in fields:
        inside = [valid for valid in fields if valid.startswith(f"{key}.")]
        if inside:
            raise ConfigError(
                f"{flag} is a section, not a setting; set one of its keys, e.g. {inside[0]}"
            )
        raise ConfigError(f"unknown config key {key}{_did_you_mean(key, list(fields))}")
    field = fields[key]
    value = _parse_value(raw_value, field)
    if not _accepts(field, value):
        raise ConfigError(f"{flag}: expected {_type_name(field)}, got {value!r}")
    *section_names, name = key.split(".")
    section = config
    for section_name in section_names:
        section = section[section_name]
    try:
        section[name] = value
    except TypeError as error:  # ConfigDict types a plain-None task key by its first value.
        raise ConfigError(
            f"{flag}: expected {section.get_type(name).__name__}, got {value!r}"
        ) from error


def _split_override(override: str) -> tuple[str, str]:
    text = override
    for prefix in _OVERRIDE_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    key, separator, raw_value = text.partition("=")
    if not separator or not key:
        raise ConfigError(f"override {override!r} is not KEY=VALUE, e.g. --cfg.optim.lr=3e-4")
    return key, raw_value


def _parse_value(raw_value: str, field: _Field) -> object:
    try:
        value = ast.literal_eval(raw_value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return raw_value  # Not a Python literal: a bare word such as sgd, kept as text.
    if field.expected is str and value is not None and not isinstance(value, str):
        return raw_value  # A str key keeps the text as typed: workdir=2024 is '2024'.
    return value


# ----------------------------------------------------------------------------- validation


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _require_choice(value: object, key: str, choices: Sequence[str]) -> None:
    hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
    _require(value in choices, f"{key} must be one of {', '.join(choices)}, got {value!r}{hint}")


def validate(config: config_dict.ConfigDict) -> None:
    """Checks the values of the shared settings; raises ConfigError naming the first bad key."""
    optim, train, log = config.optim, config.train, config.log
    guard = config.guard
    stop, collapse, best = guard.early_stopping, guard.collapse, guard.best
    _require(bool(config.task), "task is empty: set it in the task config (base is not a run)")
    _require_choice(optim.optimizer, "optim.optimizer", OPTIMIZERS)
    _require_choice(optim.schedule, "optim.schedule", SCHEDULES)
    _require_choice(stop.mode, "guard.early_stopping.mode", MONITOR_MODES)
    _require_choice(best.mode, "guard.best.mode", MONITOR_MODES)
    _require(optim.lr > 0, f"optim.lr must be > 0, got {optim.lr!r}")
    for key, value, minimum in (
        ("seed", config.seed, 0),
        ("optim.clip_norm", optim.clip_norm, 0),
        ("optim.warmup_epochs", optim.warmup_epochs, 0),
        ("train.epochs", train.epochs, 1),
        ("train.batch_size", train.batch_size, 1),
        ("train.steps_per_epoch", train.steps_per_epoch, 0),
        ("eval.batch_size", config.eval.batch_size, 1),
        ("guard.early_stopping.patience", stop.patience, 1),
        ("guard.early_stopping.min_delta", stop.min_delta, 0),
        ("guard.early_stopping.start_epoch", stop.start_epoch, 0),
        ("guard.collapse.patience", collapse.patience, 1),
        ("guard.collapse.start_epoch", collapse.start_epoch, 0),
        ("guard.ensemble_spread.members", guard.ensemble_spread.members, 2),
        ("guard.ensemble_spread.patience", guard.ensemble_spread.patience, 1),
        ("guard.ensemble_spread.start_epoch", guard.ensemble_spread.start_epoch, 0),
        ("guard.best.start_epoch", best.start_epoch, 0),
        ("guard.nonfinite.max_consecutive", guard.nonfinite.max_consecutive, 1),
        ("guard.disagreement.tolerance", guard.disagreement.tolerance, 0),
        ("guard.disagreement.patience", guard.disagreement.patience, 1),
        ("guard.disagreement.start_epoch", guard.disagreement.start_epoch, 0),
        ("guard.overfitting.patience", guard.overfitting.patience, 1),
        ("guard.overfitting.train_drop", guard.overfitting.train_drop, 0),
        ("guard.loss_terms.patience", guard.loss_terms.patience, 1),
        ("log.every_steps", log.every_steps, 1),
        ("log.diagnostics_every_steps", log.diagnostics_every_steps, 1),
        ("log.histogram_bins", log.histogram_bins, 1),
        ("ckpt.keep_latest", config.ckpt.keep_latest, 1),
    ):
        _require(value >= minimum, f"{key} must be >= {minimum}, got {value!r}")
    for key, expression in (
        ("guard.early_stopping.monitor", stop.monitor),
        ("guard.collapse.metric", collapse.metric),
        ("guard.ensemble_spread.metric", guard.ensemble_spread.metric),
        ("guard.best.monitor", best.monitor),
    ):
        if expression is not None:
            try:
                MonitorExpression(expression)
            except ValueError as error:
                raise ConfigError(f"{key}: {error}") from None
    _require(
        optim.warmup_epochs < train.epochs,
        f"optim.warmup_epochs ({optim.warmup_epochs!r}) must be < train.epochs "
        f"({train.epochs!r}), else the warm-up never finishes",
    )
    for key, value in (
        ("guard.volatility.start_epoch", guard.volatility.start_epoch),
        ("guard.overfitting.start_epoch", guard.overfitting.start_epoch),
    ):
        _require(value is None or value >= 0, f"{key} must be >= 0 or None, got {value!r}")
    for key, value in (
        ("guard.volatility.max_jump", guard.volatility.max_jump),
        ("guard.overfitting.rise", guard.overfitting.rise),
        ("guard.loss_terms.weight_tolerance", guard.loss_terms.weight_tolerance),
    ):
        _require(value > 0, f"{key} must be > 0, got {value!r}")
    _require(
        log.term_gradients or not guard.loss_terms.min_share,
        "guard.loss_terms.min_share reads the gradient shares that log.term_gradients=False "
        "turns off",
    )
    for term, floor in guard.loss_terms.min_share.items():
        _require(
            isinstance(floor, (int, float)) and 0 < floor < 1,
            f"guard.loss_terms.min_share.{term} must lie in (0, 1), got {floor!r}",
        )
    for key, specs in (
        ("guard.volatility.metrics", guard.volatility.metrics),
        ("guard.disagreement.quality", guard.disagreement.quality),
    ):
        try:
            parse_watched(key, "value", specs)
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error).replace(f"{key}: `value`", key)) from None
    for key, section in (("collapse", collapse), ("ensemble_spread", guard.ensemble_spread)):
        _require(
            section.stop_below <= section.warn_below,
            f"guard.{key}.stop_below ({section.stop_below!r}) must be <= "
            f"guard.{key}.warn_below ({section.warn_below!r})",
        )


# ----------------------------------------------------------------------------- saving


def save_config(config: config_dict.ConfigDict, path: str | os.PathLike) -> None:
    """Writes the resolved config as indented JSON with sorted keys.

    The file records a run for people and for `compare`; it is not an input to `load_config`,
    which takes Python configs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # Atomic: a crash leaves the old file or the new one, never half.


# ----------------------------------------------------------------------------- resuming


def _flatten_json(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        flat = {}
        for name, inner in value.items():
            flat.update(_flatten_json(inner, f"{prefix}{name}."))
        return flat
    return {prefix[:-1]: value}


def resume_changes(
    config: config_dict.ConfigDict, saved_path: str | os.PathLike, *, warn: Callable[[str], None]
) -> list[tuple[str, object, object]]:
    """`(key, saved value, new value)` for each key where `config` differs from `saved_path`.

    Values are compared as JSON (tuples as lists). A saved file that cannot be read gives
    a `warn` line and no changes: the run resumes, and the file is written anew.
    """
    try:
        saved = _flatten_json(json.loads(Path(saved_path).read_text()))
    except (OSError, ValueError) as error:
        warn(f"warning: {saved_path} unreadable ({error}); resuming without comparing configs")
        return []
    current = _flatten_json(json.loads(config.to_json_best_effort()))
    missing = object()
    return [
        (key, saved.get(key), current.get(key))
        for key in sorted(set(saved) | set(current))
        if saved.get(key, missing) != current.get(key, missing)
    ]


def check_resume_changes(changes: Sequence[tuple[str, object, object]]) -> None:
    """Raises a ConfigError naming the changed keys that `RESUMABLE_KEYS` does not allow."""
    refused = [
        f"{key} {old!r} -> {new!r}"
        for key, old, new in changes
        if not any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE_KEYS)
    ]
    if refused:
        raise ConfigError(
            f"--resume with a changed config: {'; '.join(refused)} cannot change on resume "
            f"(only {', '.join(RESUMABLE_KEYS)} can); resume with the saved config.json's "
            "values or start a new --workdir"
        )


# ----------------------------------------------------------------------------- command line


def parse_cli(
    argv: Sequence[str],
    *,
    prog: str | None = None,
    description: str | None = None,
    debug_flag: bool = False,
) -> tuple[argparse.Namespace, list[str]]:
    """Parses `--cfg SPEC [--workdir DIR] [--resume] [--cfg.KEY=VALUE | --cfg.KEY VALUE]...`.

    `debug_flag` adds `--debug` (tracebacks instead of one-line errors).

    Returns:
        The namespace (`cfg`, `workdir`: str or None, `resume`: bool, and `debug`: bool with
        `debug_flag`) and the overrides as `KEY=VALUE` strings for `load_config`, in
        command-line order.

    Raises:
        SystemExit: with code 2 (argparse's usage error) on a missing --cfg, an unknown argument,
            or an override without a value.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Any config key can be overridden: --cfg.optim.lr=3e-4 or --cfg.optim.lr 3e-4.",
    )
    parser.add_argument(
        "--cfg",
        required=True,
        metavar="PATH[:VARIANT]",
        help="Config file, configs/NAME.py, or the name of a bundled config, e.g. optical_depth.",
    )
    parser.add_argument(
        "--workdir", metavar="DIR", help="Run directory; overrides the config's workdir."
    )
    parser.add_argument(
        "--resume", action="store_true", help="Continue from the latest checkpoint in workdir."
    )
    if debug_flag:
        parser.add_argument(
            "--debug", action="store_true", help="Show tracebacks instead of one-line errors."
        )
    # Overrides are picked out before argparse so that a value may start with '-' (--cfg.x -1).
    remaining, overrides = [], []
    tokens = iter(argv)
    for token in tokens:
        if not token.startswith("--cfg."):
            remaining.append(token)
        elif "=" in token:
            overrides.append(token.removeprefix("--cfg."))
        else:
            value = next(tokens, None)
            if value is None:
                parser.error(f"{token} needs a value: {token}=VALUE or {token} VALUE")
            overrides.append(f"{token.removeprefix('--cfg.')}={value}")
    return parser.parse_args(remaining), overrides


def exit_on_config_error(function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """Runs `function(*args, **kwargs)`, turning a ConfigError into a one-line usage error.

    Returns:
        What `function` returns.

    Raises:
        SystemExit: code 2, like argparse's usage errors, after printing `error: MESSAGE` to
            stderr without a traceback.
    """
    try:
        return function(*args, **kwargs)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
