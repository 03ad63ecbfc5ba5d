import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxguard.tasks.optical_depth.model import FrameDecoder, OpticalDepthRegressor, head_kernel

# Every model below shares these sizes and one input shape, so the jitted functions
# compile once per structure and the file stays fast.
SIZES = dict(features=8, conv_features=(4, 8), num_heads=2, dropout=0.1, head_bias_init=0.9)
BATCH, IMAGE = 2, 8


def _model(frames=3, attention_scales=(1, 3), head_init_std=0.5, seed=0, **overrides):
    return OpticalDepthRegressor(
        frames=frames,
        attention_scales=attention_scales,
        head_init_std=head_init_std,
        rngs=nnx.Rngs(params=seed, dropout=seed + 1),
        **{**SIZES, **overrides},
    )


def _frames():
    return jax.random.normal(jax.random.key(0), (BATCH, 3, IMAGE, IMAGE, 1))


_forward = nnx.jit(lambda model, x: model(x))


@pytest.mark.parametrize(("frames", "scales"), [(3, (1, 3)), (5, (2, 5))])
def test_output_and_encoding_shapes(frames, scales):
    # Abstract evaluation: shapes and dtypes without compiling anything.
    model = nnx.eval_shape(lambda: _model(frames=frames, attention_scales=scales))
    x = jax.ShapeDtypeStruct((BATCH, frames, IMAGE, IMAGE, 1), jnp.float32)
    pred = nnx.eval_shape(lambda m, x: m(x), model, x)
    assert pred.shape == (BATCH,)
    assert pred.dtype == jnp.float32
    encoded = nnx.eval_shape(lambda m, x: m.encode(x), model, x)
    assert encoded.shape == (BATCH, frames, SIZES["features"])


def test_predictions_are_finite_and_depend_on_the_input():
    model = _model()
    model.eval()
    pred = _forward(model, _frames())
    assert pred.shape == (BATCH,)
    assert np.all(np.isfinite(pred))
    assert pred[0] != pred[1]


def test_head_init_std_and_bias_are_honoured():
    # 16 seeds x 8 kernel entries: the pooled sample std is within 25% (4 standard
    # errors) of the init std.
    kernels = [head_kernel(_model(head_init_std=1.0, seed=seed)) for seed in range(16)]
    pooled = np.concatenate(kernels).astype(np.float64)
    assert kernels[0].shape == (SIZES["features"], 1)
    assert pooled.std() == pytest.approx(1.0, rel=0.25)
    assert abs(pooled.mean()) < 4 / np.sqrt(pooled.size)
    for std in (0.01, 0.1, 0.5):  # The seed runs' output-init stds.
        model = _model(head_init_std=std, seed=0, head_bias_init=0.937)
        # Same seed, different std: the kernels differ by exactly the ratio of the stds.
        np.testing.assert_allclose(head_kernel(model), std * kernels[0], rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(model.head.bias[...]), np.float32([0.937]))
    np.testing.assert_array_equal(head_kernel(model), model.head.kernel[...])


def test_zero_head_std_predicts_the_bias():
    model = _model(head_init_std=0.0)
    model.eval()
    np.testing.assert_allclose(_forward(model, _frames()), np.full(BATCH, 0.9), rtol=1e-6)


def test_dropout_is_active_only_in_train_mode():
    model = _model()
    x = _frames()
    model.train()
    first, second = _forward(model, x), _forward(model, x)  # The dropout stream advances.
    assert not np.allclose(first, second)
    model.eval()
    np.testing.assert_array_equal(_forward(model, x), _forward(model, x))


@pytest.mark.parametrize("scales", [(1, 4), (0, 1), (), (2, 2), (1.5,)])
def test_bad_attention_scales_are_rejected(scales):
    with pytest.raises(ValueError, match="attention_scales"):
        _model(frames=3, attention_scales=scales)


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"features": 6, "num_heads": 4}, "num_heads"),
        ({"features": 0}, "features"),
        ({"conv_features": ()}, "conv_features"),
        ({"conv_features": (4, 0)}, "conv_features"),
        ({"head_init_std": -0.1}, "head_init_std"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_sizes_name_the_argument(overrides, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        _model(**overrides)


def test_wrong_number_of_frames_is_rejected():
    model = nnx.eval_shape(lambda: _model(frames=3))
    x = jax.ShapeDtypeStruct((BATCH, 5, IMAGE, IMAGE, 1), jnp.float32)
    with pytest.raises(ValueError, match="`frames`"):
        nnx.eval_shape(lambda m, x: m(x), model, x)


def test_frame_decoder_reconstructs_every_frame_from_its_own_features():
    model = _model()
    decoder = FrameDecoder(features=8, image_size=IMAGE, channels=1, rngs=nnx.Rngs(2))
    reconstruct = nnx.jit(lambda model, decoder, x: decoder(model.encode(x)))
    x = _frames()
    recon = reconstruct(model, decoder, x)
    assert recon.shape == (BATCH, 3, IMAGE, IMAGE, 1)
    # Changing the last frame changes its reconstruction only.
    changed = reconstruct(model, decoder, x.at[:, 2].add(1.0))
    delta = np.abs(np.asarray(changed - recon)).max(axis=(0, 2, 3, 4))
    assert delta[0] == delta[1] == 0.0
    assert delta[2] > 0.0


@pytest.mark.parametrize("image_size", [7, 16])
def test_frame_decoder_output_shape(image_size):
    decoder = nnx.eval_shape(
        lambda: FrameDecoder(features=8, image_size=image_size, channels=2, rngs=nnx.Rngs(0))
    )
    features = jax.ShapeDtypeStruct((BATCH, 5, 8), jnp.float32)
    out = nnx.eval_shape(lambda d, f: d(f), decoder, features)
    assert out.shape == (BATCH, 5, image_size, image_size, 2)


def test_frame_decoder_checks_feature_width():
    decoder = nnx.eval_shape(
        lambda: FrameDecoder(features=8, image_size=IMAGE, channels=1, rngs=nnx.Rngs(0))
    )
    features = jax.ShapeDtypeStruct((BATCH, 3, 5), jnp.float32)
    with pytest.raises(ValueError, match="frame_features"):
        nnx.eval_shape(lambda d, f: d(f), decoder, features)


def test_jitted_gradients_are_finite():
    model = _model()
    model.eval()
    x = _frames()
    target = jnp.array([0.3, 1.6])

    @nnx.jit
    def loss_and_grads(model, x):
        return nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)

    loss, grads = loss_and_grads(model, x)
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["head"]["kernel"][...]).sum()) > 0.0
