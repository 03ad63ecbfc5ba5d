"""The run writers: the CSV log read back with `csv`, TensorBoard event files parsed record by
record, the fan-out of `MultiWriter`, and the console lines."""

import csv
import io
import math
import os
import struct
import threading

import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2, plugin_hparams_pb2

from jaxguard.writers import (
    Console,
    CsvWriter,
    MultiWriter,
    TensorBoardWriter,
    format_duration,
    format_value,
)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ----------------------------------------------------------------------------- CsvWriter


def test_csv_header_comes_from_the_first_row_and_values_round_trip(tmp_path):
    path = str(tmp_path / "log.csv")
    writer = CsvWriter(path)
    writer.write_scalars(20, {"loss": np.float32(0.5), "epoch": 0, "lr": 1e-3})
    writer.write_scalars(40, {"loss": float("nan"), "epoch": 0, "lr": np.float64(2.5e-4)})
    writer.close()
    rows = _rows(path)
    assert rows[0] == ["step", "loss", "epoch", "lr"]
    assert rows[1] == ["20", "0.5", "0", "0.001"]
    assert rows[2][:3] == ["40", "nan", "0"] and float(rows[2][3]) == 2.5e-4
    assert math.isnan(float(rows[2][1]))  # A NaN is written as NaN, not dropped.
    assert len(rows) == 3


def test_csv_later_rows_keep_the_columns_of_the_first(tmp_path):
    path = str(tmp_path / "log.csv")
    writer = CsvWriter(path)
    writer.write_scalars(1, {"a": 1.0, "b": 2.0})
    writer.write_scalars(2, {"b": 3.0, "new": 9.0})  # `new` is dropped, `a` left empty.
    assert _rows(path) == [["step", "a", "b"], ["1", "1.0", "2.0"], ["2", "", "3.0"]]


def test_csv_resume_appends_under_the_existing_header(tmp_path):
    path = str(tmp_path / "log.csv")
    first = CsvWriter(path)
    first.write_scalars(1, {"loss": 1.0, "r2": 0.1})
    first.write_scalars(2, {"loss": 0.8, "r2": 0.2})
    resumed = CsvWriter(path)  # A resumed run opens the same file.
    resumed.write_scalars(3, {"r2": 0.3, "loss": 0.7, "extra": 5.0})
    assert _rows(path) == [
        ["step", "loss", "r2"],
        ["1", "1.0", "0.1"],
        ["2", "0.8", "0.2"],
        ["3", "0.7", "0.3"],
    ]


def test_csv_an_empty_file_gets_a_header(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("")
    CsvWriter(str(path)).write_scalars(5, {"loss": 0.25})
    assert _rows(path) == [["step", "loss"], ["5", "0.25"]]


def test_csv_ignores_histograms_and_hparams(tmp_path):
    path = str(tmp_path / "log.csv")
    writer = CsvWriter(path)
    writer.write_histograms(1, {"h": np.ones(3)})
    writer.write_hparams({"lr": 0.1}, {"r2": 0.5})
    writer.flush()
    assert not os.path.exists(path)
    writer.write_scalars(1, {"loss": 1.0})
    writer.write_histograms(2, {"h": np.ones(3)})
    assert _rows(path) == [["step", "loss"], ["1", "1.0"]]


# ----------------------------------------------------------------------------- TensorBoard


def _events(logdir):
    """Every event of every event file under `logdir`, read from the record framing."""
    events = []
    for root, _, files in sorted(os.walk(logdir)):
        for name in sorted(files):
            assert name.startswith("events.out.tfevents")
            with open(os.path.join(root, name), "rb") as f:
                data = f.read()
            offset = 0
            while offset < len(data):
                # Record: uint64 length, uint32 masked CRC, data, uint32 masked CRC.
                (length,) = struct.unpack("<Q", data[offset : offset + 8])
                events.append(event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length]))
                offset += 16 + length
            assert offset == len(data)
    return events


def _values(events):
    """(step, tag, summary value) of every summary value."""
    return [(e.step, v.tag, v) for e in events if e.HasField("summary") for v in e.summary.value]


def test_tensorboard_scalars_at_their_steps_without_the_non_finite_ones(tmp_path, caplog):
    writer = TensorBoardWriter(str(tmp_path))
    writer.write_scalars(20, {"loss": 0.5, "lr": np.float32(0.25)})
    writer.write_scalars(40, {"loss": float("nan"), "r2": np.float32(np.inf), "mae": 0.75})
    writer.close()
    scalars = [(step, tag, v.simple_value) for step, tag, v in _values(_events(tmp_path))]
    assert scalars == [(20, "loss", 0.5), (20, "lr", 0.25), (40, "mae", 0.75)]
    assert "NaN or Inf" not in caplog.text  # tensorboardX's console warning never fires.


def test_tensorboard_histograms_of_the_finite_values_only(tmp_path):
    writer = TensorBoardWriter(str(tmp_path), histogram_bins=4)
    values = np.array([[1.0, 2.0, np.nan], [4.0, np.inf, -np.inf]], np.float32)
    writer.write_histograms(7, {"pred": values, "all_nan": np.full(3, np.nan)})
    writer.close()
    histograms = [(step, tag, v.histo) for step, tag, v in _values(_events(tmp_path))]
    assert [(step, tag) for step, tag, _ in histograms] == [(7, "pred")]  # all_nan: nothing.
    histo = histograms[0][2]
    assert (histo.num, histo.min, histo.max, histo.sum) == (3, 1.0, 4.0, 7.0)
    assert histo.sum_squares == 21.0
    assert sum(histo.bucket) == 3


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB"), (4, "RGBA")])
def test_tensorboard_images_decode_with_pillow_to_the_pixels_written(tmp_path, rng, channels, mode):
    image = rng.integers(0, 256, (4, 6, channels), dtype=np.uint8)
    writer = TensorBoardWriter(str(tmp_path))
    writer.write_images(9, {"example": image})
    writer.close()
    [(step, tag, value)] = _values(_events(tmp_path))
    assert (step, tag) == (9, "example")
    assert (value.image.height, value.image.width, value.image.colorspace) == (4, 6, channels)
    decoded = Image.open(io.BytesIO(value.image.encoded_image_string))
    assert (decoded.format, decoded.mode) == ("PNG", mode)
    np.testing.assert_array_equal(np.asarray(decoded).reshape(4, 6, channels), image)


@pytest.mark.parametrize(
    "image, shown",
    [
        (np.zeros((4, 6, 2), np.uint8), r"\(4, 6, 2\) uint8"),
        (np.zeros((4, 6), np.uint8), r"\(4, 6\) uint8"),
        (np.zeros((4, 6, 3), np.float32), r"\(4, 6, 3\) float32"),
    ],
)
def test_tensorboard_images_of_a_wrong_shape_or_type_are_refused(tmp_path, image, shown):
    writer = TensorBoardWriter(str(tmp_path))
    with pytest.raises(ValueError, match=r"image 'bad' must be \[H, W, C\] uint8 .*" + shown):
        writer.write_images(1, {"bad": image})
    writer.close()


def test_tensorboard_hparams_keep_plain_values_and_stringify_the_rest(tmp_path, caplog):
    writer = TensorBoardWriter(str(tmp_path))
    writer.write_scalars(1, {"loss": 1.0})
    writer.write_hparams(
        {"lr": 1e-3, "task": "cvae", "layers": (64, 32), "flag": True, "clip": float("inf")},
        {"best/val_r2": 0.5, "test/r2": 0.25, "test/nan": float("nan")},
    )
    writer.close()
    # One event file in the run's own folder: no hparams sub-folder, one run per training run.
    assert [entry.is_file() for entry in os.scandir(tmp_path)] == [True]
    values = _values(_events(tmp_path))
    [start] = [v for _, tag, v in values if tag == "_hparams_/session_start_info"]
    data = plugin_hparams_pb2.HParamsPluginData.FromString(start.metadata.plugin_data.content)
    hparams = data.session_start_info.hparams
    assert hparams["lr"].number_value == 1e-3
    assert hparams["task"].string_value == "cvae"
    assert hparams["layers"].string_value == "(64, 32)"
    assert hparams["flag"].bool_value is True
    assert hparams["clip"].string_value == "inf"  # No non-finite number reaches TensorBoard.
    [experiment] = [v for _, tag, v in values if tag == "_hparams_/experiment"]
    data = plugin_hparams_pb2.HParamsPluginData.FromString(experiment.metadata.plugin_data.content)
    assert [m.name.tag for m in data.experiment.metric_infos] == [
        "hparam/best/val_r2",
        "hparam/test/r2",
    ]
    assert [(tag, v.simple_value) for _, tag, v in values if tag.startswith("hparam/")] == [
        ("hparam/best/val_r2", 0.5),
        ("hparam/test/r2", 0.25),
    ]
    assert "NaN or Inf" not in caplog.text


def test_tensorboard_purge_step_marks_a_restart_there(tmp_path):
    writer = TensorBoardWriter(str(tmp_path), purge_step=5)
    writer.write_scalars(6, {"loss": 1.0})
    writer.close()
    events = _events(tmp_path)
    starts = [e.step for e in events if e.HasField("session_log")]
    assert starts == [5]  # TensorBoard hides the older events from step 5 on.
    assert [e.session_log.status for e in events if e.HasField("session_log")] == [
        event_pb2.SessionLog.START
    ]


# ----------------------------------------------------------------------------- MultiWriter


class _Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def write_scalars(self, step, scalars):
        self.log.append((self.name, "write_scalars", step, dict(scalars)))

    def write_images(self, step, images):
        self.log.append((self.name, "write_images", step, sorted(images)))

    def close(self):
        self.log.append((self.name, "close"))


def test_multi_writer_calls_every_writer_that_has_the_method(tmp_path):
    log = []
    path = str(tmp_path / "log.csv")
    writer = MultiWriter([_Recorder("a", log), CsvWriter(path), _Recorder("b", log)])
    writer.write_scalars(3, {"loss": 0.5})
    writer.write_images(3, {"img": np.zeros((1, 1, 3), np.uint8)})  # CsvWriter has none.
    writer.write_histograms(3, {"h": np.ones(2)})  # Neither recorder has it.
    writer.write_hparams({"lr": 0.1}, {"r2": 0.5})
    writer.flush()
    writer.close()
    assert log == [
        ("a", "write_scalars", 3, {"loss": 0.5}),
        ("b", "write_scalars", 3, {"loss": 0.5}),
        ("a", "write_images", 3, ["img"]),
        ("b", "write_images", 3, ["img"]),
        ("a", "close"),
        ("b", "close"),
    ]
    assert _rows(path) == [["step", "loss"], ["3", "0.5"]]


def test_multi_writer_draws_images_on_another_thread_one_at_a_time(tmp_path):
    log = []
    writer = MultiWriter([_Recorder("a", log)])
    release = threading.Event()
    threads = []

    def draw(value):
        threads.append(threading.current_thread().name)
        release.wait(timeout=10)
        return {"img": np.full((1, 1, 3), value, np.uint8)}

    writer.draw_images(1, lambda: draw(1))
    assert log == []  # Still drawing: the caller went on.
    release.set()
    writer.draw_images(2, lambda: draw(2))  # Waits for the first draw, then starts this one.
    assert log == [("a", "write_images", 1, ["img"])]
    writer.wait()
    assert log[-1] == ("a", "write_images", 2, ["img"])
    assert threading.current_thread().name not in threads and len(set(threads)) == 1


def test_multi_writer_raises_a_draw_error_at_the_next_call_and_skips_drawing_for_nobody():
    writer = MultiWriter([_Recorder("a", [])])
    writer.draw_images(1, lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writer.close()
    silent = MultiWriter([])
    silent.draw_images(1, lambda: 1 / 0)  # Nobody listens: never drawn.
    silent.close()


# ----------------------------------------------------------------------------- console


@pytest.mark.parametrize(
    "value, text",
    [
        (0.123456, "0.1235"),
        (1234567.0, "1.235e+06"),
        (3, "3"),
        (float("nan"), "nan"),
        (None, "nan"),
    ],
)
def test_format_value(value, text):
    assert format_value(value) == text


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_console_off_a_terminal_prints_only_the_lines():
    stream = io.StringIO()
    console = Console(stream)
    console.progress(1, 5, 10, 0.5)
    console.line("epoch 1 loss 0.5")
    assert stream.getvalue() == "epoch 1 loss 0.5\n"


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_console_on_a_terminal_draws_the_bar_and_clears_it_before_a_line():
    stream, clock = _Terminal(), _Clock()
    console = Console(stream, width=10, clock=clock)
    console.progress(2, 5, 10, 0.123456)
    assert stream.getvalue() == "\repoch 2 [#####.....] 5/10 loss 0.1235 | ETA epoch --"
    clock.now += 10.0  # 5 more steps in 10 s: 2 s per step, the epoch is over.
    console.progress(2, 10, 10, float("nan"))
    assert stream.getvalue().endswith("\repoch 2 [##########] 10/10 loss nan | ETA epoch 0:00")
    console.line("done")
    assert stream.getvalue().endswith("\r\033[Kdone\n")
    quiet = _Terminal()
    Console(quiet, progress=False).progress(1, 1, 2, 0.5)
    assert quiet.getvalue() == ""


def test_console_etas_from_the_time_per_step_then_from_the_last_whole_epoch():
    stream, clock = _Terminal(), _Clock()
    console = Console(stream, width=4, clock=clock)
    console.progress(0, 1, 10, 1.0, epochs=5)
    clock.now += 4.0  # 4 steps in 4 s: 5 steps left in this epoch, 4 epochs of 10 s after it.
    console.progress(0, 5, 10, 1.0, epochs=5)
    assert stream.getvalue().endswith("epoch 0/5 [##..] 5/10 loss 1 | ETA epoch 0:05, run 0:45")
    clock.now += 26.0  # Epoch 1 starts 30 s after epoch 0 did (evaluation included).
    console.progress(1, 1, 10, 1.0, epochs=5)
    clock.now += 3.0  # 0.5 s per step now: 3 s left, then 3 epochs at the 30 s epoch 0 took.
    console.progress(1, 7, 10, 1.0, epochs=5)
    assert stream.getvalue().endswith("| ETA epoch 0:02, run 1:32")
    assert console.etas(1, 7, 10, None) == (1.5, 1.5)


@pytest.mark.parametrize(
    "seconds, text",
    [(0.4, "0:00"), (59.6, "1:00"), (125, "2:05"), (3725, "1:02:05"), (math.nan, "--")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_console_elapsed_grows():
    clock = _Clock()
    console = Console(io.StringIO(), clock=clock)
    clock.now += 2.5
    assert console.elapsed() == 2.5
