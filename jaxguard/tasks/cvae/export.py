"""The cVAE task's export: an ensemble panel drawn with the tested weights at the end of a run.

`export` picks a few test predictor sets (`model.sampling`), draws `num_samples` latent samples
for each from the prior and writes `samples/ensemble.npz` and `samples/panel.png` through
`panel`, the same code `python -m jaxguard.sample` uses, so both give the same files for the
same days and seed. Non-finite samples (a run the non-finite guard stopped) are drawn grey and
counted in a line, so the run still writes its report.
"""

from __future__ import annotations

import os

import numpy as np
from ml_collections import ConfigDict

from jaxguard.tasks.cvae import panel
from jaxguard.tasks.cvae.splits import extreme_threshold


def export(config: ConfigDict, workdir: str, predict, splits) -> list[str]:
    """Draws an ensemble for a few test predictors with the best model; writes npz + PNG."""
    sampling = config.model.sampling
    test = splits["test"]
    indices = panel.panel_examples(test, sampling.num_examples, sampling.seed)
    truth = test["x"][indices]

    def generate(y, noise):
        repeats = len(y) // len(indices)
        batch = {
            "x": np.repeat(truth, repeats, axis=0),
            "y": y,
            "coarse_target": np.repeat(test["coarse_target"][indices], repeats, axis=0),
            "latent_noise": noise,
        }
        return predict(batch)["generated"]

    samples = panel.draw_ensemble(
        generate,
        test["y"][indices],
        num_samples=sampling.num_samples,
        d_z=config.model.d_z,
        seed=sampling.seed,
    )
    png_path, npz_path = panel.write_ensemble(
        os.path.join(workdir, "samples"),
        predictors=test["y"][indices],
        truth=truth,
        samples=samples,
        indices=indices,
        threshold=extreme_threshold(config),
    )
    description = panel.panel_description(indices, test["y"].shape[-1], True, sampling.num_samples)
    lines = [f"sample panel: {png_path} ({description})", f"samples: {npz_path}"]
    nonfinite = int(np.size(samples) - np.count_nonzero(np.isfinite(samples)))
    if nonfinite:  # A diverged model (the non-finite guard's stop): say so beside the panel.
        lines.append(f"samples: {nonfinite} of {np.size(samples)} values non-finite (grey)")
    return lines
