"""Where a run's numbers go: TensorBoard event files, a CSV log and the console.

The writers share the CLU-style interface `write_scalars(step, scalars)`,
`write_histograms(step, arrays)`, `write_hparams(hparams)`, `flush()`, `close()`;
`MultiWriter` fans out to several. Scalars are host floats; the CSV keeps a NaN as NaN (it
is information, not an error), while TensorBoard gets only finite values (its charts cannot
draw a NaN, and tensorboardX warns on the console for each one).
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

import numpy as np
from PIL import Image
from tensorboardX import SummaryWriter
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.summary import hparams as hparams_summaries

IMAGE_CHANNELS = (1, 3, 4)  # Grey, RGB, RGBA.


class TensorBoardWriter:
    """Scalars, histograms, images and hyper-parameters as tensorboardX event files in `logdir`.

    Everything goes into the one event file of `logdir`, hyper-parameters included, so one
    training run is one TensorBoard run. Non-finite scalars and histogram values are skipped.
    """

    def __init__(self, logdir: str, *, histogram_bins: int = 20, purge_step: int | None = None):
        # purge_step: a resumed run hides the events written after its checkpoint.
        self._writer = SummaryWriter(logdir=logdir, purge_step=purge_step)
        self._bins = histogram_bins

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for key, value in scalars.items():
            if math.isfinite(float(value)):
                self._writer.add_scalar(key, float(value), global_step=step)

    def write_histograms(self, step: int, arrays: Mapping[str, np.ndarray]) -> None:
        for key, values in arrays.items():
            finite = np.asarray(values, np.float64).ravel()
            finite = finite[np.isfinite(finite)]
            if finite.size:
                self._writer.add_histogram(key, finite, global_step=step, bins=self._bins)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """`images[key]` is an `[H, W, C]` uint8 image, C in {1, 3, 4}, encoded as PNG by Pillow."""
        for key, image in images.items():
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[-1] not in IMAGE_CHANNELS or image.dtype != np.uint8:
                raise ValueError(
                    f"write_images: image {key!r} must be [H, W, C] uint8 with C in 1, 3, 4; got "
                    f"shape {image.shape} {image.dtype}"
                )
            height, width, channels = image.shape
            encoded = Summary.Image(
                height=height,
                width=width,
                colorspace=channels,
                encoded_image_string=encode_png(image),
            )
            summary = Summary(value=[Summary.Value(tag=key, image=encoded)])
            self._writer._get_file_writer().add_summary(summary, global_step=step)

    def write_hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        """The HParams dashboard's record of this run: `hparams` and `metrics` as `hparam/<key>`.

        Written into this run's own event file (tensorboardX's `add_hparams` would open a
        sub-folder, showing each training run as two). Non-scalar and non-finite hparams are
        stringified; non-finite metrics are left out (the dashboard shows them as missing).
        """
        plain = {k: v if is_plain(v) else str(v) for k, v in hparams.items()}
        finite = {f"hparam/{k}": float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        file_writer = self._writer._get_file_writer()
        for summary in hparams_summaries(plain, finite):
            file_writer.add_summary(summary)
        for tag, value in finite.items():
            self._writer.add_scalar(tag, value)

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


def is_plain(value: object) -> bool:
    """A value the HParams dashboard takes as is: a string, bool, int or finite float."""
    return isinstance(value, str | bool | int) or (
        isinstance(value, float) and math.isfinite(value)
    )


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an `[H, W, C]` uint8 image, C in {1, 3, 4} (grey, RGB, RGBA)."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


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
    """Sends every call to each writer that implements it.

    `draw_images` draws on a background thread, so a figure renders while the next epoch
    trains; `wait` (and `close`) waits for it. Matplotlib is not thread-safe: a caller that
    draws figures itself calls `wait` first.
    """

    def __init__(self, writers: Sequence[object]):
        self._writers = list(writers)
        self._drawing: concurrent.futures.Future | None = None
        self._drawer: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def writes(self) -> bool:
        """Whether any writer listens: callers skip drawing what nobody would receive."""
        return bool(self._writers)

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

    def draw_images(self, step: int, draw: Callable[[], Mapping[str, np.ndarray]]) -> None:
        """`write_images(step, draw())` on a background thread, after the previous draw ends.

        `draw` must read only host data that nobody changes afterwards. Nothing happens when no
        writer listens. An error raised by `draw` is raised by the next `draw_images`, `wait`
        or `close`. One draw at a time: a draw slower than an epoch delays the next epoch's
        `draw_images`, never piles up.
        """
        if not self.writes:
            return
        self.wait()
        if self._drawer is None:
            self._drawer = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="jaxguard-draw"
            )
        self._drawing = self._drawer.submit(lambda: self.write_images(step, draw()))

    def wait(self) -> None:
        """Waits for the image `draw_images` is drawing, if any; raises its error."""
        drawing, self._drawing = self._drawing, None
        if drawing is not None:
            drawing.result()

    def write_hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        self._each("write_hparams", hparams, metrics)

    def flush(self) -> None:
        """Flushes the writers (an image still drawing is written when its draw ends)."""
        self._each("flush")

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._drawer is not None:
                self._drawer.shutdown()
            self._each("close")


def format_value(value: float) -> str:
    """Short human form of a metric: 4 significant digits, NaN as 'nan'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.4g}"


def format_duration(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour on; `--` when unknown (NaN or infinite)."""
    if not math.isfinite(seconds):
        return "--"
    minutes, secs = divmod(round(max(seconds, 0.0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Console:
    """Progress bar with ETAs and one line per epoch on a text stream (stderr by default).

    The bar redraws in place only on a terminal; elsewhere (CI, a log file) the
    per-epoch lines alone are printed, so logs stay readable.

    ETAs: the epoch's from the time per step measured since the bar's first draw in this
    epoch; the run's adds the remaining epochs at the wall time of the last whole epoch
    (evaluation and checkpoints included), or at the time per step before one has ended.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        progress: bool = True,
        width: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._stream = stream or sys.stderr
        self._progress = progress and self._stream.isatty()
        self._width = width
        self._clock = clock
        self._start = clock()
        self._epoch: int | None = None
        self._epoch_mark = (0.0, 0)  # (time, steps done) at the first draw of this epoch.
        self._epoch_seconds = math.nan  # Wall time of the last whole epoch.

    def progress(
        self,
        epoch: int,
        step_in_epoch: int,
        steps_per_epoch: int,
        loss: float,
        *,
        epochs: int | None = None,
    ) -> None:
        """Redraws the bar after `step_in_epoch` of `steps_per_epoch` steps of `epoch` (0-based).

        `epochs` is the run's epoch budget; without it only the epoch's ETA is shown.
        """
        if not self._progress:
            return
        epoch_eta, run_eta = self.etas(epoch, step_in_epoch, steps_per_epoch, epochs)
        done = int(self._width * step_in_epoch / max(steps_per_epoch, 1))
        bar = "#" * done + "." * (self._width - done)
        label = f"epoch {epoch}" + (f"/{epochs}" if epochs else "")
        eta = f"ETA epoch {format_duration(epoch_eta)}"
        if epochs:
            eta += f", run {format_duration(run_eta)}"
        self._stream.write(
            f"\r{label} [{bar}] {step_in_epoch}/{steps_per_epoch} loss {format_value(loss)} | {eta}"
        )
        self._stream.flush()

    def etas(
        self, epoch: int, step_in_epoch: int, steps_per_epoch: int, epochs: int | None
    ) -> tuple[float, float]:
        """`(epoch seconds left, run seconds left)`, NaN until a step has been timed."""
        now = self._clock()
        if epoch != self._epoch:
            if self._epoch is not None and epoch == self._epoch + 1:
                self._epoch_seconds = now - self._epoch_mark[0]
            self._epoch = epoch
            self._epoch_mark = (now, step_in_epoch)
        mark_time, mark_steps = self._epoch_mark
        timed = step_in_epoch - mark_steps
        per_step = (now - mark_time) / timed if timed > 0 else math.nan
        epoch_left = per_step * (steps_per_epoch - step_in_epoch)
        later = 0 if epochs is None else max(epochs - epoch - 1, 0)
        per_epoch = self._epoch_seconds
        if not math.isfinite(per_epoch):  # No whole epoch timed yet: steps alone.
            per_epoch = per_step * steps_per_epoch
        return epoch_left, epoch_left + (later * per_epoch if later else 0.0)

    def line(self, text: str) -> None:
        if self._progress:
            self._stream.write("\r\033[K")  # Clear the progress bar before a permanent line.
        self._stream.write(text + "\n")
        self._stream.flush()

    def elapsed(self) -> float:
        return self._clock() - self._start
