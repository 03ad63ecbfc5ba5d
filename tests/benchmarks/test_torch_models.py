"""benchmarks.torch_models: the PyTorch twins are jaxguard's models, losses and schedule."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flax import nnx  # noqa: E402

from benchmarks import torch_models  # noqa: E402
from jaxguard import config as config_lib  # noqa: E402
from jaxguard import optim, tasks  # noqa: E402

RTOL = 1e-4


def relative_difference(reference, other) -> float:
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    return float(np.max(np.abs(reference - other)) / np.max(np.abs(reference)))


def jax_values(task, model, loss_fn, batch):
    """`(outputs, total loss)` of `model` on `batch`, in one jit (op by op compiles far more)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def values(state, batch):
        outputs = task.forward(nnx.merge(graphdef, state), batch)
        return outputs, loss_fn(task.loss_inputs(outputs, batch))[0]

    return values(state, batch)


def jax_model(name, config, splits):
    """The task's model with the head bias set (no data needed) and its pure parameters."""
    config.model.head_bias_init = 0.3
    model = tasks.get_task(name).make_model(config, splits, nnx.Rngs(0, dropout=1))
    model.eval()
    return model, nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_optical_depth_twin_has_the_parameters_outputs_and_loss_of_jaxguards():
    config = config_lib.load_config("optical_depth:small")
    config.loss.diversity_weight = 0.1  # Every term the twin mirrors.
    task = tasks.get_task("optical_depth")
    rng = np.random.default_rng(0)
    d = config.data
    batch = {
        "frames": rng.normal(size=(6, d.frames, d.image_size, d.image_size, 1)).astype(np.float32),
        "target": rng.normal(size=6).astype(np.float32),
        "weight": rng.uniform(0.5, 1.5, size=6).astype(np.float32),
    }
    model, params = jax_model("optical_depth", config, None)
    twin = torch_models.optical_depth_model(config)
    assert torch_models.parameter_count(twin) == sum(np.size(p) for p in _leaves(params))
    torch_models.load_params(twin, params)
    twin.eval()

    outputs, total = jax_values(task, model, task.make_loss(config, None, 1), batch)
    pred = outputs["pred"]
    torch_batch = {key: torch.from_numpy(value) for key, value in batch.items()}
    with torch.no_grad():
        twin_pred = twin(torch_batch["frames"])
        twin_total = torch_models.optical_depth_loss(config)(twin_pred, torch_batch)
    assert relative_difference(pred, twin_pred.numpy()) < RTOL
    assert relative_difference(total, twin_total.numpy()) < RTOL


def test_surface_twin_has_the_parameters_outputs_and_five_term_loss_of_jaxguards():
    config = config_lib.load_config("surface:small")
    task = tasks.get_task("surface")
    rng = np.random.default_rng(0)
    side = config.data.patch_size
    labels = (rng.uniform(size=(4, side, side, side)) < 0.6).astype(np.float32)
    batch = {
        "volume": rng.normal(size=labels.shape).astype(np.float32),
        "labels": labels,
        "signed_distance": rng.normal(size=labels.shape).astype(np.float32),
    }
    splits = {"train": {"labels": labels}}  # What the focal term's alpha and weights read.
    model, params = jax_model("surface", config, splits)
    twin = torch_models.surface_model(config)
    assert torch_models.parameter_count(twin) == sum(np.size(p) for p in _leaves(params))
    torch_models.load_params(twin, params)
    twin.eval()

    loss_fn = task.make_loss(config, splits, 1)
    assert set(loss_fn.terms) == {"dice", "focal", "boundary", "cldice", "connectivity"}
    outputs, total = jax_values(task, model, loss_fn, batch)
    twin_loss = torch_models.surface_loss(config, *surface_focal_settings(config, splits))
    with torch.no_grad():
        twin_outputs = torch_models.surface_forward(
            twin, {key: torch.from_numpy(value) for key, value in batch.items()}
        )
        twin_total = twin_loss(twin_outputs)
    assert relative_difference(outputs["logits"], twin_outputs["logits"].numpy()) < RTOL
    assert relative_difference(total, twin_total.numpy()) < RTOL


def test_surface_twin_augments_volume_and_labels_alike_in_training_mode_only():
    config = config_lib.load_config("surface:small")
    config.data.intensity_jitter = 0.0
    augment = torch_models.surface_model(config).augment
    volume = torch.randn(6, 4, 4, 4)
    arrays = {"volume": volume, "labels": volume.clone(), "signed_distance": volume.clone()}
    augment.eval()
    assert torch.equal(augment(arrays)["volume"], volume)
    augment.train()
    torch.manual_seed(0)
    view = augment(arrays)
    assert torch.equal(view["volume"], view["labels"])
    assert torch.equal(view["volume"], view["signed_distance"])
    assert not torch.equal(view["volume"], volume)


def test_twin_schedule_is_the_optax_schedule():
    config = config_lib.load_config("surface")
    _, schedule = optim.build_optimizer(config.optim, steps_per_epoch=12, total_steps=240)
    twin_schedule = torch_models.warmup_cosine(config.optim, 12, 240)
    for step in (0, 1, 30, 59, 60, 61, 150, 239, 240, 300):
        assert twin_schedule(step) == pytest.approx(float(schedule(step)), rel=1e-5, abs=1e-9)


def surface_focal_settings(config, splits):
    from jaxguard.tasks.surface.loss import focal_settings

    return focal_settings(config, splits)


def _leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    else:
        yield tree
