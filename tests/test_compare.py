"""`python -m jaxguard.compare` on runs of tasks other than regression (no training needed)."""

import json

from jaxguard import compare


def _run(tmp_path, name, metrics):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "test_metrics.json").write_text(json.dumps({"test": metrics}))
    return str(folder)


def test_segmentation_runs_get_their_own_columns_and_the_right_direction(tmp_path, capsys):
    first = _run(
        tmp_path,
        "plateau",
        {"dice": 0.80, "iou": 0.70, "fg_fraction_pred": 0.95, "fg_fraction_true": 0.66,
         "components_pred": 7, "components_true": 7, "boundary": 0.3, "warned": True},
    )  # fmt: skip
    second = _run(
        tmp_path,
        "default",
        {"dice": 0.90, "iou": 0.65, "fg_fraction_pred": 0.70, "fg_fraction_true": 0.66,
         "components_pred": 4, "components_true": 7, "boundary": 0.1, "warned": False},
    )  # fmt: skip
    assert compare.main([first, second]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    # Every numeric metric, booleans left out, in name order.
    assert header == ["run", "boundary", "components_pred", "components_true", "dice",
                      "fg_fraction_pred", "fg_fraction_true", "iou"]  # fmt: skip
    cells = {line.split()[0]: dict(zip(header, line.split(), strict=True)) for line in lines[1:3]}
    assert cells["default"]["dice"] == "0.9*" and cells["plateau"]["iou"] == "0.7*"
    # Closest to the truth wins, not the largest.
    assert cells["default"]["fg_fraction_pred"] == "0.7*"
    assert cells["plateau"]["components_pred"] == "7*"
    # No known direction for an arbitrary loss-term name: nobody is marked.
    assert "*" not in cells["default"]["boundary"] + cells["plateau"]["boundary"]


def test_unknown_and_missing_metrics_are_shown_unmarked(tmp_path, capsys):
    runs = [_run(tmp_path, "a", {"r2": 0.5, "mae_tail": 3.0}), _run(tmp_path, "b", {"r2": 0.6})]
    assert compare.main([*runs, "--metrics", "r2,mae_tail,active_units"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:3]]
    assert rows[0] == ["a", "0.5", "3*", "-"] and rows[1] == ["b", "0.6*", "-", "-"]
