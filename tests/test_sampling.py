"""Sampler semantics on hand-made distributions, and stop strings split across pieces."""

import mlx.core as mx
import pytest

from mlxmodels.errors import OrchardError
from mlxmodels.generate import _StopStrings
from mlxmodels.sampling import SamplingParams, make_logits_processors, make_sampler

LOGITS = mx.log(mx.array([[0.5, 0.3, 0.15, 0.05]]))


def draws(params, n=400):
    sampler = make_sampler(params)
    mx.random.seed(0)
    return {int(sampler(LOGITS).item()) for _ in range(n)}


def test_temperature_zero_is_argmax():
    assert draws(SamplingParams(temperature=0)) == {0}


def test_unrestricted_sampling_reaches_every_token():
    assert draws(SamplingParams(temperature=1.0)) == {0, 1, 2, 3}


def test_top_k_keeps_the_k_most_likely():
    assert draws(SamplingParams(temperature=1.0, top_k=2)) == {0, 1}


def test_top_p_keeps_the_smallest_set_reaching_p():
    # 0.5 + 0.3 = 0.8 >= 0.75: tokens 0 and 1 only.
    assert draws(SamplingParams(temperature=1.0, top_p=0.75)) == {0, 1}
    # A tiny p still keeps the most likely token.
    assert draws(SamplingParams(temperature=1.0, top_p=0.01)) == {0}


def test_min_p_drops_tokens_below_fraction_of_top():
    # threshold 0.25 * 0.5 = 0.125: 0.05 goes.
    assert draws(SamplingParams(temperature=1.0, min_p=0.25)) == {0, 1, 2}


def test_seed_makes_sampling_repeatable():
    sampler = make_sampler(SamplingParams(temperature=1.0))
    mx.random.seed(7)
    a = [sampler(LOGITS).item() for _ in range(20)]
    mx.random.seed(7)
    b = [sampler(LOGITS).item() for _ in range(20)]
    assert a == b


def test_repetition_penalty_follows_ctrl_convention():
    (penalise,) = make_logits_processors(SamplingParams(repetition_penalty=2.0))
    logits = mx.array([[2.0, -2.0, 1.0]])
    out = penalise(mx.array([0, 1]), logits)
    assert out.tolist() == [[1.0, -4.0, 1.0]]


@pytest.mark.parametrize(
    "field, value", [("temperature", -1), ("top_p", 0), ("top_p", 1.5), ("top_k", -2), ("min_p", 1.0)]
)
def test_invalid_settings_are_named(field, value):
    with pytest.raises(OrchardError, match=field.replace("_", "-")):
        SamplingParams(**{field: value}).validate()


def test_stop_string_split_across_pieces_is_never_emitted():
    stops = _StopStrings(["</end>"])
    emitted = []
    for piece in ["Hello </", "en", "d> ignored"]:
        text, hit = stops.feed(piece)
        emitted.append(text)
        if hit:
            break
    assert "".join(emitted) == "Hello "
    assert hit


def test_held_back_text_is_released_when_no_stop_follows():
    stops = _StopStrings(["STOP"])
    out, hit = stops.feed("abc ST")
    assert (out, hit) == ("abc ", False)
    out, hit = stops.feed("ART")
    assert (out, hit) == ("START", False)
    assert stops.flush() == ""
