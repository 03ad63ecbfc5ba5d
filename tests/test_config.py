"""Tests for jaxguard.config: locating, building, checking, overriding and validating configs."""

import importlib.resources
import json
import textwrap
from pathlib import Path

import pytest
from ml_collections import config_dict

from jaxguard import config as cfg
from jaxguard.configs import base

TINY = """
    from ml_collections import config_dict

    from jaxguard.configs import base


    def get_config(arg=None):
        config = base.get_config()
        config.task = "toy_task"
        config.data.size = 8
        config.model.features = (4, 2)
        config.model.dropout = config_dict.placeholder(float)
        config.train.epochs = 3
        if arg == "small":
            config.train.epochs = 1
        elif arg is not None:
            raise ValueError(f"unknown variant {arg!r}; known: small")
        return config
"""


def write_config(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def broken_config(tmp_path: Path, *lines: str) -> Path:
    """A valid task config with `lines` added before the return."""
    body = "\n".join(f"    {line}" for line in lines)
    return write_config(
        tmp_path,
        "broken",
        f"""
from ml_collections import config_dict

from jaxguard.configs import base


def get_config():
    config = base.get_config()
    config.task = "toy_task"
{body}
    return config
""",
    )


@pytest.fixture
def tiny(tmp_path):
    return write_config(tmp_path, "tiny", TINY)


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """A stand-in bundled folder holding tiny, other, base and __init__."""
    folder = tmp_path / "bundled"
    write_config(folder, "tiny", TINY)
    write_config(folder, "other", TINY)
    write_config(folder, "base", "def get_config():\n    return None\n")
    write_config(folder, "__init__", "")
    monkeypatch.setattr(cfg, "bundled_config_dir", lambda: folder)
    return folder


def raises_config_error(function, *args) -> str:
    with pytest.raises(cfg.ConfigError) as info:
        function(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- paths


def test_path_with_and_without_variant(tiny):
    assert cfg.resolve_config_path(str(tiny)) == (tiny.resolve(), None)
    assert cfg.resolve_config_path(f"{tiny}:small") == (tiny.resolve(), "small")


def test_existing_file_with_colon_wins(tmp_path):
    path = write_config(tmp_path, "odd:name", TINY)
    assert cfg.resolve_config_path(str(path)) == (path.resolve(), None)


def test_variant_not_split_off_when_it_holds_a_path_separator():
    message = raises_config_error(cfg.resolve_config_path, "missing:dir/tiny.py")
    assert "missing:dir/tiny.py" in message


def test_empty_variant_is_an_error(tiny):
    assert "PATH[:VARIANT]" in raises_config_error(cfg.resolve_config_path, f"{tiny}:")


def test_cfgs_alias_relative_to_cwd(tmp_path, monkeypatch, bundled):
    local = write_config(tmp_path / "run" / "configs", "tiny", TINY)
    monkeypatch.chdir(tmp_path / "run")
    assert cfg.resolve_config_path("cfgs/tiny.py") == (local.resolve(), None)
    assert cfg.resolve_config_path("cfgs/tiny.py:small") == (local.resolve(), "small")
    assert cfg.resolve_config_path("configs/tiny.py") == (local.resolve(), None)


def test_cfgs_and_configs_fall_back_to_bundled(tmp_path, monkeypatch, bundled):
    monkeypatch.chdir(tmp_path)  # No ./configs here.
    expected = (bundled / "other.py").resolve()
    assert cfg.resolve_config_path("cfgs/other.py") == (expected, None)
    assert cfg.resolve_config_path("configs/other.py:small") == (expected, "small")
    message = raises_config_error(cfg.resolve_config_path, "cfgs/nothing.py")
    assert "cfgs/nothing.py" in message and "other, tiny" in message


def test_bare_name_resolves_to_bundled(tmp_path, monkeypatch, bundled):
    monkeypatch.chdir(tmp_path)
    expected = (bundled / "tiny.py").resolve()
    assert cfg.resolve_config_path("tiny") == (expected, None)
    assert cfg.resolve_config_path("tiny.py") == (expected, None)
    assert cfg.resolve_config_path("tiny:small") == (expected, "small")


def test_bare_name_resolves_against_the_real_bundled_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, variant = cfg.resolve_config_path("base")
    assert path == Path(importlib.resources.files("jaxguard.configs") / "base.py").resolve()
    assert path.samefile(base.__file__)
    assert variant is None


def test_unknown_name_lists_bundled_configs(tmp_path, monkeypatch, bundled):
    monkeypatch.chdir(tmp_path)
    message = raises_config_error(cfg.resolve_config_path, "tinny")
    assert "did you mean tiny?" in message
    assert message.endswith("bundled configs: other, tiny")


def test_saved_json_is_not_an_input(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{}")
    assert "not a Python config" in raises_config_error(cfg.load_config, str(path))


# ----------------------------------------------------------------------------- building


def test_load_with_and_without_variant(tiny):
    assert cfg.load_config(str(tiny)).train.epochs == 3
    config = cfg.load_config(f"{tiny}:small")
    assert config.train.epochs == 1
    assert config.model.features == (4, 2)
    with pytest.raises(AttributeError):  # Locked: keys cannot be added.
        config.optim.lrr = 1.0


def test_unknown_variant_names_it(tiny):
    message = raises_config_error(cfg.load_config, f"{tiny}:huge")
    assert "'huge'" in message and str(tiny.resolve()) in message and "known: small" in message


def test_config_without_variants(tmp_path):
    path = broken_config(tmp_path)
    assert "has no variants" in raises_config_error(cfg.load_config, f"{path}:small")
    assert cfg.load_config(str(path)).task == "toy_task"


def test_file_with_unknown_shared_key(tmp_path):
    path = broken_config(tmp_path, "config.optim.lrr = 3e-4")
    message = raises_config_error(cfg.load_config, str(path))
    assert "optim.lrr" in message and "did you mean optim.lr?" in message
    path = broken_config(tmp_path, "config.trian = config_dict.ConfigDict({'epochs': 3})")
    message = raises_config_error(cfg.load_config, str(path))
    assert "trian.epochs" in message and "did you mean train.epochs?" in message


def test_file_with_wrong_type_names_the_line(tmp_path):
    path = broken_config(tmp_path, "config.train.epochs = 'ten'")
    message = raises_config_error(cfg.load_config, str(path))
    assert "line 10 (config.train.epochs = 'ten')" in message
    assert "<class 'str'>" in message and "<class 'int'>" in message


def test_file_with_wrong_type_in_a_replaced_section(tmp_path):
    path = broken_config(
        tmp_path,
        "config.train = config_dict.ConfigDict("
        "{'epochs': 'ten', 'batch_size': 32, 'steps_per_epoch': 0})",
    )
    message = raises_config_error(cfg.load_config, str(path))
    assert "train.epochs = 'ten': expected int, got str" in message


def test_file_missing_a_schema_key(tmp_path):
    path = broken_config(
        tmp_path, "config.train = config_dict.ConfigDict({'epochs': 3, 'batch_size': 32})"
    )
    assert "lacks key train.steps_per_epoch" in raises_config_error(cfg.load_config, str(path))


def test_file_none_only_for_placeholders(tmp_path):
    path = broken_config(tmp_path, "config.optim.lr = None")
    message = raises_config_error(cfg.load_config, str(path))
    assert "optim.lr = None: expected float, got NoneType" in message
    path = broken_config(tmp_path, "config.guard.early_stopping.stopping_threshold = 0.5")
    assert cfg.load_config(str(path)).guard.early_stopping.stopping_threshold == 0.5


def test_file_int_into_float_is_stored_as_float(tmp_path):
    path = broken_config(
        tmp_path, "config.optim = config_dict.ConfigDict({**config.optim.to_dict(), 'lr': 1})"
    )
    config = cfg.load_config(str(path))
    assert config.optim.lr == 1.0 and config.optim.get_type("lr") is float
    assert cfg.load_config(str(path), ["optim.lr=3e-4"]).optim.lr == 3e-4


# ----------------------------------------------------------------------------- overrides


def test_override_prefixes_and_types(tiny):
    config = cfg.load_config(
        str(tiny),
        ["--cfg.optim.lr=3e-4", "cfg.train.epochs=5", "optim.optimizer=sgd", "optim.clip_norm=1"],
    )
    assert config.optim.lr == 3e-4
    assert config.train.epochs == 5 and type(config.train.epochs) is int
    assert config.optim.optimizer == "sgd"
    assert config.optim.clip_norm == 1.0 and type(config.optim.clip_norm) is float


def test_override_str_keys_keep_text(tiny):
    config = cfg.load_config(
        str(tiny),
        ["workdir=2024", "guard.early_stopping.monitor=loss - 2 * r2", "guard.best.mode='max'"],
    )
    assert config.workdir == "2024"
    assert config.guard.early_stopping.monitor == "loss - 2 * r2"
    assert config.guard.best.mode == "max"


def test_override_task_owned_keys(tiny):
    config = cfg.load_config(str(tiny), ["model.features=[8, 4]", "data.size=16"])
    assert config.model.features == (8, 4)
    assert config.data.size == 16


def test_override_plain_none_task_key_takes_the_type_of_its_first_value(tmp_path):
    path = broken_config(tmp_path, "config.model.head = None")
    assert cfg.load_config(str(path), ["model.head=mlp"]).model.head == "mlp"
    message = raises_config_error(cfg.load_config, str(path), ["model.head=mlp", "model.head=3"])
    assert message == "--cfg.model.head: expected str, got 3"


def test_override_typo_suggests_the_key(tiny):
    message = raises_config_error(cfg.load_config, str(tiny), ["--cfg.optim.lrr=3e-4"])
    assert message == "unknown config key optim.lrr (did you mean optim.lr?)"
    message = raises_config_error(cfg.load_config, str(tiny), ["model.featurs=(1,)"])
    assert "did you mean model.features?" in message


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=abc", "--cfg.optim.lr: expected float, got 'abc'"),
        ("train.epochs=2.5", "--cfg.train.epochs: expected int, got 2.5"),
        ("train.epochs=True", "--cfg.train.epochs: expected int, got True"),
        ("log.progress=1", "--cfg.log.progress: expected bool, got 1"),
        ("optim.lr=None", "--cfg.optim.lr: expected float, got None"),
        ("data.size=big", "--cfg.data.size: expected int, got 'big'"),
    ],
)
def test_override_wrong_type(tiny, override, message):
    assert raises_config_error(cfg.load_config, str(tiny), [override]) == message


def test_override_placeholders(tiny):
    config = cfg.load_config(
        str(tiny), ["guard.early_stopping.stopping_threshold=0.5", "model.dropout=0.1"]
    )
    assert config.guard.early_stopping.stopping_threshold == 0.5
    assert config.model.dropout == 0.1
    config = cfg.load_config(str(tiny), ["guard.early_stopping.divergence_threshold=None"])
    assert config.guard.early_stopping.divergence_threshold is None


def test_override_malformed(tiny):
    assert "is a section" in raises_config_error(cfg.load_config, str(tiny), ["optim=1"])
    assert "not KEY=VALUE" in raises_config_error(cfg.load_config, str(tiny), ["optim.lr"])


def test_load_config_validates(tiny):
    message = raises_config_error(cfg.load_config, str(tiny), ["optim.optimizer=sgdd"])
    assert message == (
        "optim.optimizer must be one of adamw, adam, sgd, got 'sgdd' (did you mean sgd?)"
    )


# ----------------------------------------------------------------------------- validation


def valid_config() -> config_dict.ConfigDict:
    config = base.get_config()
    config.task = "tiny"
    return config


def test_validate_accepts_a_valid_config():
    cfg.validate(valid_config())


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("task", "", "task is empty"),
        ("optim.optimizer", "lamb", "optim.optimizer must be one of"),
        ("optim.schedule", "linear", "optim.schedule must be one of constant, cosine"),
        ("optim.lr", 0.0, "optim.lr must be > 0"),
        ("optim.clip_norm", -1.0, "optim.clip_norm must be >= 0"),
        ("train.epochs", 0, "train.epochs must be >= 1"),
        ("train.batch_size", 0, "train.batch_size must be >= 1"),
        ("eval.batch_size", 0, "eval.batch_size must be >= 1"),
        ("train.steps_per_epoch", -1, "train.steps_per_epoch must be >= 0"),
        ("optim.warmup_epochs", -1.0, "optim.warmup_epochs must be >= 0"),
        ("optim.warmup_epochs", 20.0, "warm-up never finishes"),
        ("guard.early_stopping.mode", "up", "guard.early_stopping.mode must be one of min, max"),
        ("guard.early_stopping.patience", 0, "guard.early_stopping.patience must be >= 1"),
        ("guard.collapse.stop_below", 0.6, "guard.collapse.stop_below (0.6) must be <="),
    ],
)
def test_validate_rejects(key, value, fragment):
    config = valid_config()
    *sections, name = key.split(".")
    section = config
    for section_name in sections:
        section = section[section_name]
    section[name] = value
    assert fragment in raises_config_error(cfg.validate, config)


# ----------------------------------------------------------------------------- flatten and save


def test_flatten_and_save(tiny, tmp_path):
    config = cfg.load_config(str(tiny))
    flat = cfg.flatten(config)
    assert flat["optim.lr"] == config.optim.lr
    assert flat["guard.early_stopping.patience"] == 10
    assert flat["model.features"] == (4, 2)
    assert "optim" not in flat and "optim.plateau" not in flat
    assert set(flat) >= set(cfg.flatten(base.get_config())) - {"task"}
    path = tmp_path / "run" / "config.json"
    cfg.save_config(config, path)
    saved = json.loads(path.read_text())
    assert saved["optim"]["lr"] == config.optim.lr
    assert saved["guard"]["early_stopping"]["stopping_threshold"] is None
    assert saved["model"]["features"] == [4, 2]


# ----------------------------------------------------------------------------- command line


def test_parse_cli_collects_overrides():
    args, overrides = cfg.parse_cli(
        [
            "--cfg",
            "tiny:small",
            "--cfg.optim.lr=3e-4",
            "--cfg.train.epochs",
            "5",
            "--resume",
            "--workdir",
            "out",
            "--cfg.optim.clip_norm",
            "-1",
        ]
    )
    assert args.cfg == "tiny:small"
    assert args.resume and args.workdir == "out"
    assert overrides == ["optim.lr=3e-4", "train.epochs=5", "optim.clip_norm=-1"]
    args, overrides = cfg.parse_cli(["--cfg=tiny"])
    assert (args.cfg, args.workdir, args.resume, overrides) == ("tiny", None, False, [])


@pytest.mark.parametrize(
    "argv",
    [
        ["--cfg", "tiny", "--epochs", "3"],
        ["--cfg.optim.lr=3e-4"],
        ["--cfg", "tiny", "--cfg.optim.lr"],
    ],
)
def test_parse_cli_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cfg.parse_cli(argv, prog="jaxguard.train")
    assert info.value.code == 2
    assert "jaxguard.train: error:" in capsys.readouterr().err


def test_cli_overrides_reach_the_config(tiny):
    args, overrides = cfg.parse_cli(["--cfg", f"{tiny}:small", "--cfg.optim.lr", "0.01"])
    config = cfg.load_config(args.cfg, overrides)
    assert (config.train.epochs, config.optim.lr) == (1, 0.01)


def test_exit_on_config_error(tiny, capsys):
    assert cfg.exit_on_config_error(cfg.load_config, str(tiny)).task == "toy_task"
    with pytest.raises(SystemExit) as info:
        cfg.exit_on_config_error(cfg.load_config, str(tiny), ["optim.lrr=1"])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "error: unknown config key optim.lrr (did you mean optim.lr?)\n"
    )


def test_config_error_is_one_line():
    assert str(cfg.ConfigError("bad\nvalue  here\n")) == "bad value here"


# ----------------------------------------------------------------------------- moved keys, guards


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "config.model.collapse_guard = config_dict.ConfigDict({'enabled': True})",
            "sets model.collapse_guard.enabled: model.collapse_guard.enabled moved to "
            "guard.active_units.enabled",
        ),
        ("config.loss.plateau_guard = 3", "loss.plateau_guard moved to guard.plateau"),
    ],
)
def test_a_config_setting_a_moved_key_is_told_where_it_went(tmp_path, line, message):
    path = broken_config(tmp_path, line)
    assert message in raises_config_error(cfg.load_config, str(path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "--cfg.model.head_grad_band=(1e-5, 10.0)",
            "--cfg.model.head_grad_band: model.head_grad_band moved to "
            "guard.head_gradient_band.band",
        ),
        ("eval.every_epochs=2", "eval.every_epochs was removed: every epoch is evaluated"),
        ("ckpt.every_epochs=2", "ckpt.every_epochs was removed: every epoch is checkpointed"),
    ],
)
def test_an_override_of_a_moved_key_is_told_where_it_went(tiny, override, message):
    assert raises_config_error(cfg.load_config, str(tiny), [override]).endswith(message)


def test_an_unknown_guard_section_names_the_task_s_sections(tmp_path):
    path = broken_config(tmp_path, "config.guard.gapp = config_dict.ConfigDict({'ratio': 2.0})")
    message = raises_config_error(cfg.load_config, str(path))
    assert message.startswith("unknown guard section guard.gapp (did you mean gap?)")
    assert "early_stopping, collapse, ensemble_spread, best, nonfinite, volatility" in message
    assert message.endswith("warmup, gap")


def test_a_task_guard_section_takes_overrides_and_the_task_checks_it(tmp_path):
    path = broken_config(tmp_path, "config.guard.gap = config_dict.ConfigDict({'ratio': 2.0})")
    assert cfg.load_config(str(path), ["guard.gap.ratio=4"]).guard.gap.ratio == 4.0
    message = raises_config_error(cfg.load_config, str(path), ["guard.gap.ratio=0"])
    assert message == "guard.gap.ratio must be > 0, got 0.0"
    assert "did you mean guard.gap.ratio" in raises_config_error(
        cfg.load_config, str(path), ["guard.gap.ration=4"]
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=-1", "seed must be >= 0, got -1"),
        ("log.every_steps=0", "log.every_steps must be >= 1, got 0"),
        ("log.diagnostics_every_steps=0", "log.diagnostics_every_steps must be >= 1, got 0"),
        ("ckpt.keep_latest=0", "ckpt.keep_latest must be >= 1, got 0"),
        ("guard.nonfinite.max_consecutive=0", "guard.nonfinite.max_consecutive must be >= 1"),
        ("guard.early_stopping.min_delta=-0.1", "guard.early_stopping.min_delta must be >= 0"),
        ("guard.best.mode=maximum", "guard.best.mode must be one of min, max, got 'maximum'"),
        ("guard.early_stopping.monitor=loss +", "guard.early_stopping.monitor: monitor 'loss +'"),
        ("guard.best.monitor=f(r2)", "guard.best.monitor: monitor 'f(r2)': the call"),
    ],
)
def test_shared_values_are_checked_before_anything_runs(tiny, override, message):
    assert message in raises_config_error(cfg.load_config, str(tiny), [override])


def test_an_unknown_task_is_a_one_line_config_error(tiny):
    message = raises_config_error(cfg.load_config, str(tiny), ["task=cvea"])
    assert message.startswith("task: unknown task 'cvea' (did you mean cvae?)")


# ----------------------------------------------------------------------------- broken files


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("def get_config(:\n    pass\n", "line 1: syntax error"),
        ("import no_such_module_xyz\n", "ModuleNotFoundError: No module named"),
        ("def get_config():\n    return 1 / 0\n", "line 2 (return 1 / 0): ZeroDivisionError"),
        ("def get_config():\n    raise ValueError('bad')\n", "ValueError: bad"),
    ],
)
def test_a_config_file_that_fails_is_one_config_error_line(tmp_path, source, fragment):
    path = write_config(tmp_path, "failing", source)
    message = raises_config_error(cfg.load_config, str(path))
    assert message.startswith(f"config {path}") and fragment in message


# ----------------------------------------------------------------------------- resuming


def test_resume_changes_lists_each_changed_key(tiny, tmp_path):
    saved = tmp_path / "config.json"
    cfg.save_config(cfg.load_config(str(tiny)), saved)
    assert not (tmp_path / "config.json.tmp").exists()  # Written aside, then renamed.
    changed = cfg.load_config(str(tiny), ["optim.lr=0.5", "model.features=(8,)"])
    changes = cfg.resume_changes(changed, saved, warn=print)
    assert changes == [("model.features", [4, 2], [8]), ("optim.lr", 0.001, 0.5)]
    assert cfg.resume_changes(cfg.load_config(str(tiny)), saved, warn=print) == []


def test_resume_refuses_the_keys_that_cannot_change_in_one_line():
    cfg.check_resume_changes([("optim.lr", 0.1, 0.2), ("guard.collapse.patience", 3, 5)])
    cfg.check_resume_changes([("log.every_steps", 20, 5), ("train.epochs", 5, 9)])
    message = raises_config_error(
        cfg.check_resume_changes, [("optim.lr", 0.1, 0.2), ("model.features", [4], [8])]
    )
    assert message.startswith("--resume with a changed config: model.features [4] -> [8]")
    assert "optim.lr 0.1" not in message


def test_an_unreadable_saved_config_is_a_warning_not_a_failure(tiny, tmp_path):
    saved = tmp_path / "config.json"
    saved.write_text('{"optim": ')
    warnings = []
    assert cfg.resume_changes(cfg.load_config(str(tiny)), saved, warn=warnings.append) == []
    assert len(warnings) == 1 and "unreadable" in warnings[0]
