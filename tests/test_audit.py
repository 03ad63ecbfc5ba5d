"""`python -m jaxguard.audit`: the hook protocol, its report, and the optical-depth audit."""

import os

import numpy as np
import pytest
import scipy.stats

from jaxguard import audit
from jaxguard import config as config_lib
from jaxguard.tasks.optical_depth import TASK as optical_depth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_format_report_prints_figures_and_line_sections():
    lines = audit.format_report(
        {"train": {"done": 3, "rate": 0.0312345, "note": "ok"}, "advice": ["a", "b"]}
    )
    assert lines == ["train: done=3, rate=0.03123, note=ok", "advice:", "  a", "  b"]
    assert audit.format_report(["plain line"]) == ["plain line"]


def test_cli_prints_the_pointer_done_balance(capsys):
    spec = os.path.join(ROOT, "configs", "pointer.py:small")
    lines = audit.main(["--cfg", spec, "--cfg.data.num_val=40"])
    out = capsys.readouterr().out
    assert out.splitlines() == lines and lines[0].startswith("audit of pointer")
    train = next(line for line in lines if line.startswith("train: "))
    val = next(line for line in lines if line.startswith("val: "))
    # The small variant: 96 train and 40 val examples, a quarter of them done.
    assert "examples=96" in train and "done=24" in train and "balancing_pos_weight=3" in train
    assert "examples=40" in val and "done=10" in val
    assert any("pos_weight = (1 - rate) / rate = 3" in line for line in lines)


def test_cli_typo_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        config_lib.exit_on_config_error(
            audit.main, ["--cfg", "configs/pointer.py:small", "--cfg.loss.pos_wieght=2"]
        )
    assert info.value.code == 2 and "loss.pos_wieght" in capsys.readouterr().err


def test_optical_depth_audit_matches_numpy_and_scipy():
    config = config_lib.load_config(
        os.path.join(ROOT, "configs", "optical_depth.py:small"),
        ["loss.overweight_threshold=1.0", "loss.overweight_factor=3.0"],
    )
    targets = {
        "train": np.array([0.2, 0.5, 0.9, 1.1, 1.5, 1.95, 1.95, 0.4], np.float32),
        "val": np.array([0.3, 0.3, 0.3], np.float32),
        "test": np.array([1.2, 0.8], np.float32),
    }
    result = optical_depth.audit(config, {k: {"target": v} for k, v in targets.items()})
    train = np.asarray(targets["train"], np.float64)
    figures = result["train"]
    assert figures["count"] == 8
    assert figures["mean"] == pytest.approx(train.mean())
    assert figures["std"] == pytest.approx(train.std())
    assert figures["skew"] == pytest.approx(scipy.stats.skew(train))
    assert figures["q25"] == pytest.approx(np.quantile(train, 0.25))
    assert figures["q95"] == pytest.approx(np.quantile(train, 0.95))
    assert figures["above_threshold"] == 0.5 and figures["at_ceiling"] == 0.25
    assert np.isnan(result["val"]["skew"]) and result["val"]["std"] == 0.0
    advice = result["recommendations"][0]
    # Four high targets weighted 3 against four weighted 1: 75% of the weight.
    assert "50.0% of targets lie above loss.overweight_threshold=1" in advice
    assert "they carry 75.0% of the base loss weight" in advice


def test_surface_audit_reports_balance_and_the_focal_settings():
    from sklearn.utils.class_weight import compute_class_weight

    from jaxguard.tasks.surface import TASK as surface

    config = config_lib.load_config(os.path.join(ROOT, "configs", "surface.py:small"), [])
    shares = {"train": [0.0, 0.5, 1.0, 0.75], "val": [1.0, 1.0], "test": [0.5, 0.625]}

    def patches(fractions):  # [N, 2, 2, 2] with the given papyrus share per patch
        flat = np.zeros((len(fractions), 8), np.float32)
        for row, fraction in zip(flat, fractions, strict=True):
            row[: round(8 * fraction)] = 1
        return flat.reshape(-1, 2, 2, 2)

    splits = {name: {"labels": patches(f)} for name, f in shares.items()}
    result = surface.audit(config, splits)
    train = result["train"]
    assert train["patches"] == 4 and train["fg_fraction"] == pytest.approx(0.5625)
    assert (train["min"], train["max"], train["median"]) == (0.0, 1.0, 0.625)
    assert train["q05"] == pytest.approx(np.quantile(shares["train"], 0.05))
    assert train["empty_patches"] == 1 and train["full_patches"] == 1
    assert train["all_foreground_dice"] == pytest.approx(2 * 0.5625 / 1.5625)
    advice = "\n".join(result["recommendations"])
    labels = (splits["train"]["labels"].ravel() > 0.5).astype(int)
    background, papyrus = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)
    assert f"background {background:.3f}, papyrus {papyrus:.3f}" in advice
    assert f"focal alpha {1 - 0.5625:.3f} (from the data" in advice
    # val is all papyrus, far from train's share; test (56.25%) is not.
    assert "val is 100.0% papyrus against train's 56.2%" in advice and "test is" not in advice


def test_cvae_audit_counts_extremes_and_how_often_a_batch_sees_one():
    from jaxguard.tasks.cvae import TASK as cvae
    from jaxguard.tasks.cvae.splits import extreme_threshold

    config = config_lib.load_config(
        os.path.join(ROOT, "configs", "cvae.py:small"), ["train.batch_size=8"]
    )
    threshold = extreme_threshold(config)
    rng = np.random.default_rng(0)

    def days(count, extreme_days):
        x = rng.gamma(0.5, 4.0, size=(count, 4, 4))
        x[:extreme_days, 0, 0] = threshold + 1 + np.arange(extreme_days)
        x[:extreme_days, 1, 1] = threshold + 2
        flags = (x.reshape(count, -1).max(axis=1) > threshold).astype(np.float32)
        return {"x": x.astype(np.float32), "has_extreme": flags}

    splits = {"train": days(40, 2), "val": days(10, 0), "test": days(10, 3)}
    result = cvae.audit(config, splits)
    x = splits["train"]["x"].astype(np.float64)
    train = result["train"]
    assert (train["days"], train["extreme_days"], train["extreme_pixels"]) == (40, 2, 4)
    assert train["extreme_day_rate"] == 0.05 and train["extreme_pixel_rate"] == 4 / 640
    assert train["q999"] == pytest.approx(np.quantile(x, 0.999))
    assert train["mean"] == pytest.approx(x.mean()) and train["max"] == threshold + 2
    advice = "\n".join(result["recommendations"])
    assert f"holds an extreme day {1 - 0.95**8:.0%} of the time" in advice
    assert "val has no extreme day" in advice and "test has 3 extreme days" in advice
