"""The 3D UNet, the training-time augmentation and the model hooks of the surface task."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import ndimage

from jaxguard import config as config_lib
from jaxguard import losses
from jaxguard.tasks.surface.model import (
    ConvBlock,
    PatchAugment,
    SurfaceSegmenter,
    UNet3D,
    forward,
    head,
    make_model,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = os.path.join(ROOT, "configs/surface.py:small")

_SHAPE = (3, 8, 8, 8)
# Module calls under nnx.jit: one compile each instead of op-by-op dispatch.
_call = nnx.jit(lambda module, inputs: module(inputs))


def _unet(**overrides):
    settings = dict(
        initial_filters=4,
        depth=1,
        norm="group",
        norm_groups=2,
        dropout=0.0,
        head_bias_init=0.5,
        rngs=nnx.Rngs(0, dropout=1),
    )
    return UNet3D(**{**settings, **overrides})


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_unet_maps_volumes_to_logits_of_the_same_shape(norm):
    model = _unet(norm=norm)
    model.eval()
    logits = _call(model, jnp.zeros(_SHAPE))
    assert logits.shape == _SHAPE
    # A zero volume through zero-mean layers: the head bias shows where the logits start.
    if norm != "batch":
        np.testing.assert_allclose(logits, 0.5, atol=0.5)


def test_head_bias_sets_the_initial_logit_of_a_constant_input():
    model = _unet(norm="none", head_bias_init=-1.25)
    head = model.head
    # The head sees GELU features; its bias is the requested value.
    np.testing.assert_allclose(head.bias[...], -1.25)


def test_unet_rejects_sides_not_divisible_by_the_depth():
    model = _unet(depth=2)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth = 4"):
        model(jnp.zeros((1, 8, 8, 6)))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [({"depth": 0}, "depth"), ({"norm": "layer"}, "norm"), ({"initial_filters": 2.5}, "filters")],
)
def test_unet_settings_are_checked(overrides, match):
    with pytest.raises(ValueError, match=match):
        _unet(**overrides)


def _augment(**overrides):
    settings = dict(flips=True, rotations=True, intensity_jitter=0.0)
    rngs = nnx.Rngs(0, dropout=3)
    return PatchAugment(**{**settings, **overrides}, rngs=rngs.dropout)


def _labelled_batch(seed=0):
    rng = np.random.default_rng(seed)
    volume = rng.normal(size=_SHAPE).astype(np.float32)
    labels = (volume > 0.3).astype(np.float32)
    return {"volume": volume, "labels": labels}


def test_augment_is_the_identity_in_eval_mode():
    augment = _augment(intensity_jitter=0.5)
    augment.eval()
    batch = _labelled_batch()
    out = augment(batch)
    for key in batch:
        np.testing.assert_array_equal(out[key], batch[key])


def test_augment_moves_labels_with_the_volume():
    augment = _augment()
    batch = _labelled_batch()
    seen = set()
    for _ in range(6):
        out = jax.tree.map(np.asarray, _call(augment, batch))
        # The same flip/turn is applied to both: the voxelwise relation survives.
        np.testing.assert_array_equal(out["labels"], (out["volume"] > 0.3).astype(np.float32))
        # A flip or a quarter turn only permutes voxels.
        np.testing.assert_allclose(np.sort(out["volume"].ravel()), np.sort(batch["volume"].ravel()))
        seen.add(out["volume"].tobytes())
    assert len(seen) > 1  # fresh draws from the model's RNG stream


def test_augmented_signed_distance_is_the_map_of_the_augmented_labels():
    # Flips and quarter turns are symmetries of the voxel grid, so transforming the stored
    # map equals recomputing it (scipy's exact EDT) on the transformed labels.
    augment = _augment()
    labels = (np.random.default_rng(2).random(_SHAPE) < 0.5).astype(np.float32)
    batch = {
        "volume": labels,
        "labels": labels,
        "signed_distance": np.asarray(losses.signed_distance_map(labels)),
    }
    out = jax.tree.map(np.asarray, _call(augment, batch))
    for mask, distance in zip(out["labels"] > 0.5, out["signed_distance"], strict=True):
        expected = ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)
        np.testing.assert_allclose(distance, expected, atol=1e-5)


def test_intensity_jitter_scales_and_shifts_each_patch():
    augment = _augment(flips=False, rotations=False, intensity_jitter=0.2)
    volume = np.ones(_SHAPE, np.float32)
    out = np.asarray(augment({"volume": volume})["volume"])
    per_patch = out.reshape(len(out), -1)
    np.testing.assert_allclose(per_patch, per_patch[:, :1] * np.ones_like(per_patch))
    assert len(np.unique(per_patch[:, 0])) == len(out)  # each patch its own draw


def test_model_train_and_eval_switch_the_augmentation():
    model = SurfaceSegmenter(unet=_unet(), augment=_augment(intensity_jitter=0.3))
    batch = _labelled_batch()
    model.eval()
    np.testing.assert_array_equal(model.augment(batch)["volume"], batch["volume"])
    model.train()
    assert not np.array_equal(model.augment(batch)["volume"], batch["volume"])


def test_kernel_init_is_lecun_normal_over_the_kernel_fan_in():
    from jaxguard.tasks.surface.model import kernel_init

    kernel = np.asarray(kernel_init(jax.random.key(0), (3, 3, 3, 16, 32)))
    assert kernel.shape == (3, 3, 3, 16, 32)
    # Truncated at 2 std and rescaled so the variance is 1 / fan_in, fan_in = 27 * 16.
    assert kernel.std() == pytest.approx(1 / np.sqrt(27 * 16), rel=0.03)
    assert abs(kernel.mean()) < 3 * kernel.std() / np.sqrt(kernel.size)
    assert np.abs(kernel).max() <= 2 * 1.14 / np.sqrt(27 * 16)


def test_make_model_starts_the_head_at_the_training_prior_and_forward_keeps_the_view():
    config = config_lib.load_config(SMALL)
    labels = np.zeros((4, 10), np.float32)
    labels[:, :7] = 1
    model = make_model(config, {"train": {"labels": labels}}, nnx.Rngs(0, dropout=1))
    assert head(model) is model.unet.head
    np.testing.assert_allclose(head(model).bias[...], np.log(0.7 / 0.3), rtol=1e-6)
    batch = {**_labelled_batch(), "signed_distance": np.ones(_SHAPE, np.float32)}
    model.eval()  # the view is the batch itself
    outputs = nnx.jit(forward)(model, batch)
    assert set(outputs) == {"logits", "labels", "signed_distance"}
    assert outputs["logits"].shape == _SHAPE
    np.testing.assert_array_equal(outputs["labels"], batch["labels"])
    np.testing.assert_array_equal(outputs["signed_distance"], batch["signed_distance"])


def test_conv_block_equals_flax_3d_convolutions_values_and_gradients():
    # The block computes each 3x3x3 convolution as a 2D one over stacked depth slices; flax's
    # own 3D nnx.Conv is the reference, on a volume with three different sides.
    block = ConvBlock(3, 4, norm="none", groups=1, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 4, 6, 8, 3))

    def reference(block, x):
        for conv in block.convs:
            x = nnx.gelu(conv(x))
        return x

    np.testing.assert_allclose(block(x), reference(block, x), rtol=1e-5, atol=1e-5)
    weights = jax.random.normal(jax.random.key(2), (2, 4, 6, 8, 4))
    ours = nnx.grad(lambda b: jnp.sum(weights * b(x)))(block)
    theirs = nnx.grad(lambda b: jnp.sum(weights * reference(b, x)))(block)
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
