"""Draw downscaled ensembles from a trained cVAE run: `python -m jaxguard.sample --run RUN_DIR`.

    python -m jaxguard.sample --run runs/cvae-20250101-120000 --n 8
    python -m jaxguard.sample --run RUN_DIR --n 16 --indices 3,17,250 --split val
    python -m jaxguard.sample --run RUN_DIR --predictors my_days.npz --out my_samples
    python -m jaxguard.sample --run RUN_DIR --n 16 --format netcdf

The run's best checkpoint (else its latest) is restored with the data the run was
trained on. For each chosen predictor set, `--n` latent draws from the prior
`p(z | y)` are decoded into fine fields. Written to `--out` (default
`RUN_DIR/samples`): `ensemble.npz` (`samples` `[K, n, H, W]` in mm/day, `y`, `indices`,
`threshold` and the truth `x` when known) and `panel.png` (one row per predictor
set: the predictor channels, the truth, the samples; extreme pixels red). With `--format
netcdf` also `ensemble.nc` (`write_netcdf`): the members, the prior-mean field, the
predictors and the truth on the coordinates of the run's data (its dates and grid axes
when it was trained on a netCDF or zarr source, indices otherwise); it needs the `io` extra
(`pip install 'jaxguard[io]'`).

Predictor sets come from a split of the run's data (`--split`, `--indices` or
`--examples`, by default the run's `model.sampling.num_examples` with the heaviest
days first) or from a `.npz` file with an array `y` `[K, h, w, C]` in the units of
the training predictors (`--predictors`; an array `x` `[K, H, W]` in the same file is
drawn as the truth). A wrong path, array or shape exits with code 2 and one line.

When the truth is known and `--n` is at least 2, the ensemble is scored against it and the
scores printed (fair CRPS and its ratio to the prior-mean field's MAE, spread/skill, the rank
histogram of the truth among the members, Brier score and skill for exceeding the extreme
threshold; `jaxguard.metrics.EnsembleMetrics`). `--all` scores every row of the split and
writes no files:

    python -m jaxguard.sample --run RUN_DIR --n 16 --all    # the test split's scores
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxguard import config as config_lib
from jaxguard import trainer
from jaxguard.tasks.cvae import data as data_lib
from jaxguard.tasks.cvae import panel
from jaxguard.tasks.cvae.metrics import CVAEMetrics
from jaxguard.tasks.cvae.report import ensemble_lines
from jaxguard.tasks.cvae.splits import coordinates, extreme_threshold

SCORE_CHUNK = 250  # Predictor sets decoded at once when scoring (bounds the memory).


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jaxguard.sample",
        description="Draw an ensemble of downscaled fields from a trained cVAE run.",
    )
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="A finished cvae run.")
    parser.add_argument(
        "--n",
        type=int,
        metavar="N",
        help="Samples per predictor set (default: the run's model.sampling.num_samples).",
    )
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--indices", metavar="I,J,...", help="Rows of the split to downscale.")
    choice.add_argument(
        "--examples",
        type=int,
        metavar="K",
        help="How many rows (heaviest days first; default: the run's model.sampling.num_examples).",
    )
    choice.add_argument("--predictors", metavar="FILE.npz", help="Predictors `y` [K, h, w, C].")
    choice.add_argument(
        "--all", action="store_true", help="Score every row of the split; write no files."
    )
    parser.add_argument(
        "--seed", type=int, help="Seed of the latent draws (default: model.sampling.seed)."
    )
    parser.add_argument("--out", metavar="DIR", help="Output folder (default RUN_DIR/samples).")
    parser.add_argument(
        "--format",
        default="npz",
        choices=("npz", "netcdf"),
        help="netcdf: also write ensemble.nc on the data's coordinates (needs jaxguard[io]).",
    )
    return parser.parse_args(argv)


def write_netcdf(
    path: str,
    *,
    samples: np.ndarray,
    prior_mean: np.ndarray,
    predictors: np.ndarray,
    truth: np.ndarray | None,
    time: np.ndarray,
    coords: data_lib.Coordinates,
    threshold: float,
) -> str:
    """Writes the ensemble as a netCDF4 file on the data's coordinates; returns `path`.

    Args:
      path: the `.nc` file to write (replaced if it exists).
      samples: `[K, n, H, W]` members, in the field's units (mm/day).
      prior_mean: `[K, H, W]` the field decoded from the prior mean.
      predictors: `[K, h, w, C]` the predictors the members were drawn for.
      truth: `[K, H, W]` the observed fields, or None when unknown.
      time: `[K]` the time labels of the K predictor sets (dates for netCDF/zarr data).
      coords: the grid axes, names and field attributes of the run's data.
      threshold: the extreme threshold (mm/day), stored as an attribute.

    Returns:
      `path`. Variables: `samples` `(time, member, *fine)`, `prior_mean` `(time, *fine)`,
      `predictors` `(time, *coarse, channel)` and, when known, the field's own name
      (`data.field_var`) `(time, *fine)`.
    """
    names = coords.names
    xarray = data_lib.import_xarray("--format netcdf", "h5netcdf")
    fine, coarse = (names.time, *names.fine), (names.time, *names.coarse)
    attrs = coords.field_attrs
    variables = {
        "samples": (
            (names.time, "member", *names.fine),
            samples,
            {**attrs, "long_name": "ensemble members drawn from the prior p(z | y)"},
        ),
        "prior_mean": (
            fine,
            prior_mean,
            {**attrs, "long_name": "field decoded from the prior mean"},
        ),
        "predictors": ((*coarse, "channel"), predictors, {"long_name": "coarse predictors"}),
    }
    if truth is not None:
        variables[names.field] = (fine, truth, attrs)
    dataset = xarray.Dataset(
        variables,
        coords={
            names.time: time,
            names.fine[0]: coords.fine[0],
            names.fine[1]: coords.fine[1],
            names.coarse[0]: coords.coarse[0],
            names.coarse[1]: coords.coarse[1],
            "member": np.arange(samples.shape[1]),
            "channel": np.array(coords.channels, dtype=object),
        },
        attrs={"extreme_threshold_mm_per_day": threshold, "source": "python -m jaxguard.sample"},
    )
    dataset.to_netcdf(path, engine="h5netcdf")
    return path


def _read_predictors(path: str, model) -> tuple[np.ndarray, np.ndarray | None]:
    """`y` (and `x` when present) from a user file, checked against the model's shapes."""
    if not os.path.isfile(path):
        raise config_lib.ConfigError(f"--predictors {path}: no such file")
    with np.load(path, allow_pickle=False) as archive:
        if "y" not in archive.files:
            raise config_lib.ConfigError(
                f"--predictors {path}: array 'y' is missing (the file has "
                f"{', '.join(archive.files) or 'no arrays'})"
            )
        y = archive["y"].astype(np.float32)
        x = archive["x"].astype(np.float32) if "x" in archive.files else None
    expected = tuple(model.coarse_shape)
    if y.ndim != 4 or y.shape[1:] != expected or len(y) == 0:
        raise config_lib.ConfigError(
            f"--predictors {path}: array 'y' has shape {y.shape}; this run expects "
            f"[K, {', '.join(map(str, expected))}]"
        )
    if not np.isfinite(y).all():
        raise config_lib.ConfigError(f"--predictors {path}: array 'y' holds NaN or infinite values")
    if x is not None and x.shape != (len(y), *model.fine_shape):
        raise config_lib.ConfigError(
            f"--predictors {path}: array 'x' has shape {x.shape}; expected "
            f"[{len(y)}, {', '.join(map(str, model.fine_shape))}] to match y"
        )
    return y, x


def _split_indices(args, split, sampling) -> np.ndarray:
    size = len(split["x"])
    if args.indices:
        try:
            indices = np.array([int(i) for i in args.indices.split(",")], int)
        except ValueError:
            raise config_lib.ConfigError(
                f"--indices {args.indices}: expected comma-separated integers"
            ) from None
        bad = [int(i) for i in indices if not 0 <= i < size]
        if bad:
            raise config_lib.ConfigError(
                f"--indices: {bad[0]} is outside the {args.split} split (0 to {size - 1})"
            )
        return indices
    count = sampling.num_examples if args.examples is None else args.examples
    if count < 1:
        raise config_lib.ConfigError(f"--examples must be >= 1, got {count}")
    return panel.panel_examples(split, count, sampling.seed)


def score_lines(samples: np.ndarray, truth: np.ndarray, prior_mean: np.ndarray, config) -> list:
    """The ensemble's scores against the truth, as `report.txt` words them.

    Args:
      samples: `[K, n, H, W]` members (mm/day), n >= 2.
      truth: `[K, H, W]`.
      prior_mean: `[K, H, W]` the field decoded from the prior mean (the deterministic one).
      config: the run's config (the extreme threshold).
    """
    threshold = extreme_threshold(config)
    metrics = CVAEMetrics.ensemble_only(samples.shape[1], threshold)
    for start in range(0, len(truth), SCORE_CHUNK):
        part = slice(start, start + SCORE_CHUNK)
        metrics = metrics.update_ensemble(jnp.asarray(samples[part]), jnp.asarray(truth[part]))
    figures = metrics.ensemble_figures()
    figures["mae_all"] = float(np.mean(np.abs(prior_mean - truth)))
    return [f"{len(truth)} predictor sets scored against the truth"] + ensemble_lines(
        figures, threshold
    )


def main(argv: Sequence[str] | None = None) -> tuple[str, ...] | list[str]:
    args = _parse(sys.argv[1:] if argv is None else argv)
    config, model, splits = trainer.restore_model(args.run)
    if config.task != "cvae":
        raise config_lib.ConfigError(
            f"--run {args.run}: a {config.task!r} run; jaxguard.sample draws from cvae runs"
        )
    if args.format == "netcdf":  # Before anything is drawn: the io extra must be there.
        data_lib.import_xarray("--format netcdf", "h5netcdf")
    sampling = config.model.sampling
    num_samples = sampling.num_samples if args.n is None else args.n
    if num_samples < 1:
        raise config_lib.ConfigError(f"--n must be >= 1, got {num_samples}")
    if args.predictors:
        predictors, truth = _read_predictors(args.predictors, model)
        indices = np.arange(len(predictors))
        time = indices
    elif args.all:
        split = splits[args.split]
        indices = np.arange(len(split["x"]))
        predictors, truth = split["y"], split["x"]
    else:
        split = splits[args.split]
        indices = _split_indices(args, split, sampling)
        predictors, truth = split["y"][indices], split["x"][indices]
        time = coordinates(config).time[args.split][indices]

    generate = nnx.jit(lambda model, y, noise: model.generate(y, noise))
    seed = sampling.seed if args.seed is None else args.seed
    samples = np.concatenate(
        [
            panel.draw_ensemble(
                lambda y, noise: generate(model, y, noise),
                predictors[start : start + SCORE_CHUNK],
                num_samples=num_samples,
                d_z=config.model.d_z,
                seed=seed + start,
            )
            for start in range(0, len(predictors), SCORE_CHUNK)
        ]
    )
    lines = []
    scored = truth is not None and num_samples >= 2
    if scored or args.format == "netcdf":
        most_likely = nnx.jit(lambda model, y: model.generate(y))
        prior_mean = np.concatenate(
            [
                np.asarray(most_likely(model, predictors[start : start + SCORE_CHUNK]))
                for start in range(0, len(predictors), SCORE_CHUNK)
            ]
        )
    if scored:
        lines = score_lines(samples, truth, prior_mean, config)
        for line in lines:
            print(line)
    if args.all:
        return lines
    png_path, npz_path = panel.write_ensemble(
        args.out or os.path.join(args.run, "samples"),
        predictors=predictors,
        truth=truth,
        samples=samples,
        indices=indices,
        threshold=extreme_threshold(config),
    )
    description = panel.panel_description(
        indices, predictors.shape[-1], truth is not None, num_samples
    )
    print(f"sample panel: {png_path} ({description})")
    print(f"samples: {npz_path}")
    if args.format == "npz":
        return png_path, npz_path
    netcdf_path = write_netcdf(
        os.path.join(os.path.dirname(npz_path), "ensemble.nc"),
        samples=samples,
        prior_mean=prior_mean,
        predictors=predictors,
        truth=truth,
        time=time,
        coords=coordinates(config),
        threshold=extreme_threshold(config),
    )
    print(f"samples (netCDF): {netcdf_path}")
    return png_path, npz_path, netcdf_path


if __name__ == "__main__":
    config_lib.exit_on_config_error(main)
