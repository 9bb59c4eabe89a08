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


# -- generation end to end on a scripted model -------------------------------------------------------

VOCAB = 16


class _HoldBackDetokenizer:
    """Releases each token's text only when the next token arrives (as SentencePiece's streaming
    detokenizer does with leading spaces), the last one at `finalize`."""

    def __init__(self, texts):
        self.texts = texts
        self.reset()

    def reset(self):
        self.pending, self.last_segment = "", ""

    def add_token(self, token):
        self.last_segment, self.pending = self.pending, self.texts.get(token, "?")

    def finalize(self):
        self.last_segment, self.pending = self.pending, ""


class _Tokenizer:
    bos_token = None
    eos_token_ids = []

    def __init__(self, texts=None):
        self.detokenizer = _HoldBackDetokenizer(texts or {})


class _ScriptedModel:
    """Logits from `logits_at(n)` for the n-th token it generates, whatever it is fed; a real cache
    object counts the tokens fed."""

    def __init__(self, logits_at, prompt_tokens):
        self.logits_at, self.prompt_tokens = logits_at, prompt_tokens

    def make_cache(self):
        from mlxmodels.cache import KVCache

        return [KVCache()]

    def __call__(self, tokens, cache=None):
        L = tokens.shape[1]
        keys = mx.zeros((1, 1, L, 1))
        cache[0].update_and_fetch(keys, keys)
        logits = mx.zeros((1, L, VOCAB))
        logits[:, -1, :] = mx.array(self.logits_at(cache[0].offset - self.prompt_tokens))
        return logits


def _one_hot(script):
    return lambda n: [10.0 if v == script[min(n, len(script) - 1)] else 0.0 for v in range(VOCAB)]


def test_stop_string_completed_by_held_back_text_at_the_end_is_a_stop_string():
    """The last token's text reaches the stop-string check only when the detokenizer is finalized
    (max_tokens hit first): the answer still ends before the stop string, and says why."""
    from mlxmodels.generate import generate

    texts = {1: "a", 2: "E", 3: "N", 4: "D"}
    model = _ScriptedModel(_one_hot([1, 2, 3, 4]), prompt_tokens=2)
    text, stats = generate(model, _Tokenizer(texts), [5, 6], max_tokens=4, stop=["END"],
                           sampling=SamplingParams(temperature=0.0))
    assert stats.tokens == [1, 2, 3, 4]
    assert text == "a" and stats.finish_reason == "stop_string"


def test_a_stop_string_never_completed_keeps_the_length_reason_and_the_text():
    from mlxmodels.generate import generate

    texts = {1: "a", 2: "E", 3: "N", 4: "D"}
    model = _ScriptedModel(_one_hot([1, 2, 3, 4]), prompt_tokens=2)
    text, stats = generate(model, _Tokenizer(texts), [5, 6], max_tokens=4, stop=["ENDS"],
                           sampling=SamplingParams(temperature=0.0))
    assert text == "aEND" and stats.finish_reason == "length"


def _hf_repetition_penalty(input_ids, scores, penalty):
    """transformers' RepetitionPenaltyLogitsProcessor.__call__, transcribed to NumPy: every token of
    the context, once, has its logit divided by the penalty if positive, multiplied if negative."""
    import numpy as np

    score = np.take_along_axis(scores, input_ids, axis=1)
    score = np.where(score < 0, score * penalty, score / penalty)
    out = scores.copy()
    np.put_along_axis(out, input_ids, score, axis=1)
    return out


def test_repetition_penalty_matches_transformers_processor():
    import numpy as np

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(1, 50)).astype(np.float32) * 3
    context = rng.integers(0, 50, size=(1, 40))  # repeats, positive and negative logits
    (penalise,) = make_logits_processors(SamplingParams(repetition_penalty=1.3, repetition_context=40))
    ours = penalise(mx.array(context[0], dtype=mx.uint32), mx.array(scores))
    np.testing.assert_allclose(np.array(ours), _hf_repetition_penalty(context, scores, 1.3), rtol=1e-6)


def test_repetition_penalty_sees_the_tokens_already_in_the_cache():
    """A cache holding an earlier prefix (a chat's previous turns): the penalty looks back over it,
    so greedy decoding picks what transformers' generate() picks over the whole context at once."""
    import numpy as np

    from mlxmodels.generate import generate

    logits = np.array([4.0, 3.6, -0.5, 3.2, 2.9, -1.0, 2.5, 2.2, 1.9, 1.5, 1.2, 0.8, 0.5, -2.0, 0.2, 0.1], np.float32)
    prefix, prompt, penalty, steps = [0, 3, 13, 2], [7, 9], 2.0, 6
    model = _ScriptedModel(lambda n: logits.tolist(), prompt_tokens=len(prefix) + len(prompt))
    cache = model.make_cache()
    model(mx.array([prefix]), cache=cache)

    context, expected = prefix + prompt, []
    for _ in range(steps):
        nxt = int(np.argmax(_hf_repetition_penalty(np.array([context]), logits[None].copy(), penalty)))
        expected.append(nxt)
        context.append(nxt)

    sampling = SamplingParams(temperature=0.0, repetition_penalty=penalty, repetition_context=64)
    _, stats = generate(model, _Tokenizer(), prompt, max_tokens=steps, sampling=sampling, cache=cache,
                        prefix_ids=prefix)
    assert stats.tokens == expected
    assert expected[0] == 1  # token 0 leads, but the cached prefix holds it


def test_do_sample_false_in_generation_config_means_greedy(tmp_path):
    import argparse
    import json

    from app.options import sampling_from_args
    from mlxmodels.prompt import generation_defaults

    flags = dict(temp=None, top_p=None, top_k=None, min_p=None, repetition_penalty=None, seed=None)
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"do_sample": False, "temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.1}))
    defaults = generation_defaults(tmp_path)
    assert defaults["temperature"] == 0.0 and defaults["repetition_penalty"] == 1.1
    assert sampling_from_args(argparse.Namespace(**flags), defaults).temperature == 0.0
    # The command line still wins over the file.
    assert sampling_from_args(argparse.Namespace(**dict(flags, temp=0.8)), defaults).temperature == 0.8

    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.6}))
    assert generation_defaults(tmp_path)["temperature"] == 0.6
