"""The pointer task's model (`jaxguard/tasks/pointer/model.py`): what the done head reads."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxguard import config as config_lib
from jaxguard.tasks.pointer import model


def _done_logit_after_perturbing_the_encoder(net, batch):
    before = model.forward(net, batch)["done_logit"]
    stem = net.encoder[0]
    stem.kernel[...] = stem.kernel[...] + 0.5
    return before, model.forward(net, batch)["done_logit"]


@pytest.mark.parametrize("done_input", model.DONE_INPUTS)
def test_the_done_head_reads_the_encoder_only_when_asked(small, load_small, done_input):
    config = load_small(f"model.done_input={done_input}")
    net = model.make_model(config, small[1], nnx.Rngs(0))
    batch = jax.tree.map(lambda a: a[:8], small[1]["val"])
    before, after = _done_logit_after_perturbing_the_encoder(net, batch)
    moved = float(jnp.max(jnp.abs(after - before)))
    if done_input == "detector":
        assert moved == 0.0  # The detector sees the image and the marks, not the encoder.
    else:
        assert moved > 1e-4
    params = nnx.state(net, nnx.Param)
    has_detector = any(path[0] == "detector" for path, _ in nnx.to_flat_state(params))
    assert has_detector == (done_input == "detector")


def test_an_unknown_done_input_is_refused_by_the_model_and_the_config(small, load_small):
    with pytest.raises(ValueError, match="`done_input` must be one of"):
        model.PointerNet(
            work_size=8,
            features=4,
            dilations=(1,),
            mark_sigma=1.0,
            attention_scale=1.0,
            head_init_std=0.01,
            done_input="pooled",
            rngs=nnx.Rngs(0),
        )
    with pytest.raises(config_lib.ConfigError, match="model.done_input must be one of"):
        load_small("model.done_input=pooled")
