"""LossTermGuard: the effective weight of a term and its share of the gradient, at run time."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxguard import losses
from jaxguard.guards import Diagnostics, LossTermGuard, StepInfo
from jaxguard.tasks.cvae.loss import seed002_ratio_scaled_extreme_mae

THRESHOLD = 50.0


def batch_with_extremes(extreme_samples: int, batch: int = 16, seed: int = 0):
    """`[batch, 8, 8]` fields in mm/day; the first `extreme_samples` hold one 80 mm/day pixel."""
    rng = np.random.default_rng(seed)
    target = rng.gamma(0.5, 4.0, size=(batch, 8, 8)).astype(np.float32)
    target[:extreme_samples, 0, 0] = 80.0
    pred = target + rng.normal(0.0, 3.0, size=target.shape).astype(np.float32)
    return {"pred": jnp.asarray(pred), "target": jnp.asarray(target)}


def composite(extreme_fn):
    return losses.compose(
        mae=losses.Term(losses.absolute_error),
        extreme=losses.Term(
            functools.partial(extreme_fn, threshold=THRESHOLD),
            weight=2.0,
            reference=functools.partial(losses.extreme_mae, threshold=THRESHOLD),
        ),
    )


def step_scalars(loss, inputs):
    _, terms = loss(inputs)
    return {f"loss/{key}": float(value) for key, value in terms.items()}


def test_effective_weight_of_the_seed_bug_is_the_share_of_extreme_samples():
    inputs = batch_with_extremes(extreme_samples=2)
    fixed = step_scalars(composite(losses.extreme_mae), inputs)
    bugged = step_scalars(composite(seed002_ratio_scaled_extreme_mae), inputs)
    assert fixed["loss/extreme/effective_weight"] == pytest.approx(2.0, rel=1e-6)
    # 2 of 16 samples hold extremes: 2.0 * 2 / 16.
    assert bugged["loss/extreme/effective_weight"] == pytest.approx(0.25, rel=1e-6)
    assert bugged["loss/extreme/reference"] == pytest.approx(fixed["loss/extreme"], rel=1e-6)
    none = step_scalars(composite(losses.extreme_mae), batch_with_extremes(extreme_samples=0))
    assert none["loss/extreme/reference"] == 0.0 and none["loss/extreme/effective_weight"] == 0.0


def feed_steps(guard, scalars_per_step, start=1):
    events = []
    for offset, scalars in enumerate(scalars_per_step):
        event = guard.on_step(StepInfo(start + offset, 0, scalars))
        if event is not None:
            events.append(event)
    return events


def test_the_guard_warns_on_the_seed_bug_and_stays_silent_on_the_fix():
    sizes = [2, 0, 1, 3, 0, 2, 1]  # Extreme samples per batch; 0: no data for the term.
    bugged = [
        step_scalars(composite(seed002_ratio_scaled_extreme_mae), batch_with_extremes(n, seed=i))
        for i, n in enumerate(sizes)
    ]
    fixed = [
        step_scalars(composite(losses.extreme_mae), batch_with_extremes(n, seed=i))
        for i, n in enumerate(sizes)
    ]
    events = feed_steps(LossTermGuard(["mae", "extreme"], patience=3), bugged)
    # Counted at steps 1, 3, 4 (step 2 has no extremes and leaves the count): warns at step 4.
    assert [(event.level, event.step) for event in events] == [("warn", 4)]
    assert "term extreme has effective weight 0.375" in events[0].message
    assert "against its configured 2, 19% of it" in events[0].message
    assert feed_steps(LossTermGuard(["mae", "extreme"], patience=3), fixed) == []


def test_the_weight_warning_survives_resume_and_comes_once_per_stretch():
    bug = {
        "loss/extreme/effective_weight": 0.2,
        "loss/extreme/weight": 2.0,
        "loss/extreme/reference": 1.0,
    }
    good = {**bug, "loss/extreme/effective_weight": 2.0}
    sequence = [bug, bug, bug, bug, good, bug, bug, bug]
    whole = feed_steps(LossTermGuard(["extreme"]), sequence)
    assert [event.step for event in whole] == [3, 8]
    first = LossTermGuard(["extreme"])
    head = feed_steps(first, sequence[:2])
    second = LossTermGuard(["extreme"])
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail = feed_steps(second, sequence[2:], start=3)
    assert [event.message for event in head + tail] == [event.message for event in whole]
    with pytest.raises(ValueError, match="saved state is for terms"):
        LossTermGuard(["mae"]).load_state_dict(first.state_dict())


def test_the_share_floor_warns_while_the_term_has_data_only():
    guard = LossTermGuard(["mae", "extreme"], min_share={"extreme": 0.1}, patience=2)

    def check(step, share, value):
        metrics = {"terms/extreme/grad_share": share, "terms/extreme/value": value}
        return guard.on_diagnostics(Diagnostics(step, 0, metrics))

    assert check(100, 0.05, 1.0) is None
    assert check(200, 0.02, 0.0) is None  # No extreme pixels: the check does not count.
    event = check(300, 0.04, 2.0)
    assert event.level == "warn" and "term extreme carries 4.0% of the gradient" in event.message
    assert check(400, 0.5, 2.0) is None


def test_bad_settings_name_the_argument():
    with pytest.raises(ValueError, match="`min_share` names kl, not terms of the loss"):
        LossTermGuard(["mae"], min_share={"kl": 0.1})
    with pytest.raises(ValueError, match="`min_share` of mae must be in"):
        LossTermGuard(["mae"], min_share={"mae": 1.5})


def test_a_reference_must_be_callable():
    with pytest.raises(TypeError, match="has a `reference` that is not callable"):
        losses.compose(mae=losses.Term(losses.absolute_error, reference=1.0))


def test_effective_weight_is_jittable_and_differentiable():
    loss = composite(seed002_ratio_scaled_extreme_mae)
    inputs = batch_with_extremes(extreme_samples=4)

    def total(pred):
        return loss({**inputs, "pred": pred})[0]

    gradient = jax.jit(jax.grad(total))(inputs["pred"])
    assert gradient.shape == inputs["pred"].shape and bool(jnp.all(jnp.isfinite(gradient)))
