"""MonitorExpression: the safe grammar, name resolution and IEEE arithmetic."""

import math
import re

import pytest

from jaxguard.guards.monitor import MonitorExpression

INF = float("inf")


# ---------------------------------------------------------------- MonitorExpression


def test_monitor_bare_name_and_composite_match_hand_computation():
    metrics = {"loss": 0.53, "r2": -0.2, "std_ratio": 0.03}
    assert MonitorExpression("r2").evaluate(metrics) == -0.2
    composite = MonitorExpression("val_loss - 2*r2")
    assert composite.names == ("loss", "r2")
    assert composite.evaluate(metrics) == pytest.approx(0.53 - 2 * -0.2, abs=1e-15)
    grouped = MonitorExpression(" -(loss + r2) / 2 * std_ratio ")
    assert grouped.source == "-(loss + r2) / 2 * std_ratio"
    assert grouped.names == ("loss", "r2", "std_ratio")
    assert grouped.evaluate(metrics) == pytest.approx(-(0.53 - 0.2) / 2 * 0.03, abs=1e-15)


def test_monitor_division_by_zero_is_inf_not_an_error():
    assert MonitorExpression("loss / r2").evaluate({"loss": 1.0, "r2": 0.0}) == INF
    assert math.isnan(MonitorExpression("loss / r2").evaluate({"loss": 0.0, "r2": 0.0}))


@pytest.mark.parametrize(
    "source, bad_part",
    [
        ("__import__('os')", "the call `__import__('os')`"),
        ("loss.real", "the attribute access `loss.real`"),
        ("abs(r2)", "the call `abs(r2)`"),
        ("loss - r2.__class__", "the attribute access `r2.__class__`"),
        ("loss[0]", "the subscript `loss[0]`"),
        ("r2 ** 2", "the operator Pow in `r2 ** 2`"),
        ("loss // 2", "the operator FloorDiv in `loss // 2`"),
        ("+loss", "the operator UAdd in `+loss`"),
        ("'loss'", "the non-numeric constant `'loss'`"),
        ("loss + True", "the non-numeric constant `True`"),
        ("loss < r2", "the Compare expression `loss < r2`"),
        ("(lambda: 0)()", "the call `(lambda: 0)()`"),
    ],
)
def test_monitor_rejects_anything_outside_the_grammar(source, bad_part):
    with pytest.raises(ValueError, match=re.escape(bad_part) + " is not allowed"):
        MonitorExpression(source)


@pytest.mark.parametrize("source", ["loss -", "", "   ", "loss; r2"])
def test_monitor_rejects_syntax_errors_and_empty_strings(source):
    with pytest.raises(ValueError, match="monitor|non-empty"):
        MonitorExpression(source)


def test_monitor_validate_suggests_the_closest_name_in_one_line():
    available = ["loss", "r2", "std_ratio", "pred_std"]
    MonitorExpression("val_loss - 2 * r2").validate(available)
    with pytest.raises(ValueError, match=r"unknown metric 'r3' \(did you mean 'r2'\?\)") as info:
        MonitorExpression("loss - 2 * r3").validate(available)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"'std_ration' \(did you mean 'std_ratio'\?\)"):
        MonitorExpression("val_std_ration").validate(available)
    with pytest.raises(ValueError, match="unknown metric 'kl'; available: loss, pred_std"):
        MonitorExpression("kl").validate(available)


def test_monitor_evaluate_missing_name_lists_available_metrics():
    with pytest.raises(KeyError, match="reads r3, missing.*available: loss, r2"):
        MonitorExpression("loss - r3").evaluate({"loss": 1.0, "r2": 0.0})
