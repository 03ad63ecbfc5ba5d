"""Where a run's numbers go: TensorBoard event files, a CSV log and the console.

The writers share the CLU-style interface `write_scalars(step, scalars)`,
`write_histograms(step, arrays)`, `write_hparams(hparams)`, `flush()`, `close()`;
`MultiWriter` fans out to several. Scalars are host floats; a NaN is written
as NaN (it is information, not an error).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

import numpy as np
from tensorboardX import SummaryWriter
from tensorboardX.proto.summary_pb2 import Summary

from jaxguard.png import encode_png


class TensorBoardWriter:
    """Scalars, histograms and hyper-parameters as tensorboardX event files in `logdir`."""

    def __init__(self, logdir: str, *, histogram_bins: int = 20, purge_step: int | None = None):
        # purge_step: a resumed run hides the events written after its checkpoint.
        self._writer = SummaryWriter(logdir=logdir, purge_step=purge_step)
        self._bins = histogram_bins

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, float(value), global_step=step)

    def write_histograms(self, step: int, arrays: Mapping[str, np.ndarray]) -> None:
        for key, values in arrays.items():
            finite = np.asarray(values, np.float64).ravel()
            finite = finite[np.isfinite(finite)]
            if finite.size:
                self._writer.add_histogram(key, finite, global_step=step, bins=self._bins)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """`images[key]` is an `[H, W, C]` uint8 image, C in {1, 3, 4}."""
        for key, image in images.items():
            # Encoded here: tensorboardX's add_image needs PIL, which jaxguard does not depend on.
            height, width, channels = np.shape(image)
            encoded = Summary.Image(
                height=height,
                width=width,
                colorspace=channels,
                encoded_image_string=encode_png(image),
            )
            summary = Summary(value=[Summary.Value(tag=key, image=encoded)])
            self._writer._get_file_writer().add_summary(summary, global_step=step)

    def write_hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        plain = {
            k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in hparams.items()
        }
        self._writer.add_hparams(plain, {f"hparam/{k}": float(v) for k, v in metrics.items()})

    def flush(self) -> None:
        self._name_failures(self._writer.flush)

    def close(self) -> None:
        self._name_failures(self._writer.close)

    def _name_failures(self, action) -> None:
        """Runs `action`; an OSError of the event file (it names no path) names `logdir`."""
        try:
            action()
        except OSError as error:
            error.filename = error.filename or self._writer.logdir
            raise


class CsvWriter:
    """One row per `write_scalars` call, columns fixed by the first row written.

    Appends to an existing file (a resumed run) and keeps its header; keys that
    were not in the header are dropped, columns without a value are left empty.
    """

    def __init__(self, path: str):
        self._path = path
        self._columns: list[str] | None = None
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, newline="") as f:
                self._columns = next(csv.reader(f))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        row = {
            "step": step,
            **{k: v if isinstance(v, int) else float(v) for k, v in scalars.items()},
        }
        new_file = self._columns is None
        if new_file:
            self._columns = list(row)
        with open(self._path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)

    def write_histograms(self, step: int, arrays: Mapping[str, np.ndarray]) -> None:
        del step, arrays  # Histograms have no place in a flat table.

    def write_hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        del hparams, metrics  # The resolved config is saved beside the CSV.

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MultiWriter:
    """Sends every call to each writer that implements it."""

    def __init__(self, writers: Sequence[object]):
        self._writers = list(writers)

    def _each(self, method: str, *args) -> None:
        for writer in self._writers:
            if hasattr(writer, method):
                getattr(writer, method)(*args)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._each("write_scalars", step, scalars)

    def write_histograms(self, step: int, arrays: Mapping[str, np.ndarray]) -> None:
        self._each("write_histograms", step, arrays)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        self._each("write_images", step, images)

    def write_hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        self._each("write_hparams", hparams, metrics)

    def flush(self) -> None:
        self._each("flush")

    def close(self) -> None:
        self._each("close")


def format_value(value: float) -> str:
    """Short human form of a metric: 4 significant digits, NaN as 'nan'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.4g}"


class Console:
    """Progress bar and one line per epoch on a text stream (stderr by default).

    The bar redraws in place only on a terminal; elsewhere (CI, a log file) the
    per-epoch lines alone are printed, so logs stay readable.
    """

    def __init__(self, stream: TextIO | None = None, *, progress: bool = True, width: int = 30):
        self._stream = stream or sys.stderr
        self._progress = progress and self._stream.isatty()
        self._width = width
        self._start = time.monotonic()

    def progress(self, epoch: int, step_in_epoch: int, steps_per_epoch: int, loss: float) -> None:
        if not self._progress:
            return
        done = int(self._width * step_in_epoch / max(steps_per_epoch, 1))
        bar = "#" * done + "." * (self._width - done)
        self._stream.write(
            f"\repoch {epoch} [{bar}] {step_in_epoch}/{steps_per_epoch} loss {format_value(loss)}"
        )
        self._stream.flush()

    def line(self, text: str) -> None:
        if self._progress:
            self._stream.write("\r\033[K")  # Clear the progress bar before a permanent line.
        self._stream.write(text + "\n")
        self._stream.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self._start
