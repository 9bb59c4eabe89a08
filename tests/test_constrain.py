"""Constrained decoding (mlxmodels/constrain.py) checked against references nobody here wrote:
`jsonschema` validates JSON output, the `regex` module's partial matching decides which tokens a
regex allows, `lark`'s own parser accepts grammar output, and numpy's unpackbits reads bitmasks.

The acceptance run (20 schemas x 20 seeds at temperature 0.7) is `tests/bench_constrain.py`; the
suite runs every schema with ORCHARD_CONSTRAIN_SEEDS seeds (default 2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxmodels.constrain import Constraint, ConstraintError, apply_token_mask, batch_mask
from mlxmodels.generate import generate
from mlxmodels.prompt import format_messages
from mlxmodels.sampling import SamplingParams

SCHEMAS = json.loads((Path(__file__).parent / "fixtures" / "json_schemas.json").read_text())
SEEDS = int(os.environ.get("ORCHARD_CONSTRAIN_SEEDS", "2"))
# Typical answers to these schemas are under ~110 tokens, but a sampled string may be one character
# per token: the "review" schema allows ~350 characters (6 strings of 40, a title of 50, syntax), and
# at temperature 0.7 seed 19 writes 326 characters in 202 tokens. The bound covers the worst case.
MAX_TOKENS = 400


def schema_prompt(tokenizer, case: dict) -> str:
    """The same prompt constrained and unconstrained: the schema in the system prompt, the task as
    the user turn."""
    messages = [
        {"role": "system", "content": "Answer with a JSON object that matches this JSON schema: "
                                      + json.dumps(case["schema"])},
        {"role": "user", "content": case["prompt"]},
    ]
    return format_messages(tokenizer, messages)


def allowed(matcher) -> set[int]:
    row = np.empty(matcher.mask_words, dtype=np.int32)
    matcher.fill_mask(row)
    return set(np.flatnonzero(np.unpackbits(row.view(np.uint8), bitorder="little")).tolist())


@pytest.fixture(scope="module")
def smollm(default_model):
    return default_model


@pytest.fixture(scope="module")
def token_texts(smollm):
    """Each token's text, None for special tokens and for pieces of a multi-byte character."""
    hf = smollm[1]._tokenizer
    special = set(hf.all_special_ids) | set(hf.added_tokens_decoder)
    texts = [None if i in special else hf.decode([i]) for i in range(len(hf))]
    return [None if t is None or "\ufffd" in t else t for t in texts]


# --- bad input: one line naming the problem, before any generation -------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: Constraint.json_schema('{"type": "objekt"}'), "invalid JSON schema: Invalid type: objekt"),
    (lambda: Constraint.json_schema('{"type": "object"', "--json-schema"), "--json-schema is not valid JSON"),
    (lambda: Constraint.json_schema([1, 2]), "must be a JSON object, got list"),
    (lambda: Constraint.json_schema({"type": "integer", "minimum": 5, "maximum": 1}),
     "minimum (5) is greater than maximum (1)"),
    (lambda: Constraint.json_schema({"type": "array", "uniqueItems": True}),
     "unsupported JSON schema keyword(s) uniqueItems"),
    (lambda: Constraint.json_schema({"type": "object", "if": {}, "then": {}}), "unsupported JSON schema keyword(s) if, then"),
    (lambda: Constraint.json_schema({"type": "string", "format": "colour"}), "unsupported JSON schema string format 'colour'"),
    (lambda: Constraint.json_schema({"$ref": "#/$defs/missing"}), "does not exist"),
    (lambda: Constraint.regex("a(b", "--regex"), '--regex: invalid regex: invalid regex "a(b": unclosed group'),
    (lambda: Constraint.grammar("start: x\n", "--grammar g.lark"), 'line 1, column 8: unknown name: "x"'),
    (lambda: Constraint.grammar('root ::= "a', "--grammar g.gbnf"), "--grammar g.gbnf: invalid grammar"),
])
def test_bad_constraints_are_one_line_errors(make, message):
    with pytest.raises(ConstraintError) as e:
        make()
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("flags, message", [
    (["--json-schema", '{"type": "objekt"}'], "orchard: error: --json-schema: invalid JSON schema: Invalid type: objekt"),
    (["--json-schema", "/nonexistent/schema.json"], "--json-schema /nonexistent/schema.json: cannot read it"),
    (["--regex", "[a-"], "--regex: invalid regex"),
    (["--json-schema", '{"type": "array", "uniqueItems": true}'], "unsupported JSON schema keyword(s) uniqueItems"),
])
def test_cli_rejects_bad_constraints_before_loading(flags, message, tmp_path):
    """The constraint is checked before the model loads: a model that does not exist is never
    reached, and nothing reaches stdout."""
    run = subprocess.run(
        [sys.executable, "-m", "app.main", "run", "-m", str(tmp_path / "no-model"), "-p", "hi", *flags],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent,
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert message in run.stderr


def test_cli_bad_grammar_file(tmp_path):
    grammar = tmp_path / "g.lark"
    grammar.write_text("start: 'a' | \n  oops ::: \n")
    run = subprocess.run(
        [sys.executable, "-m", "app.main", "run", "-m", str(tmp_path / "no-model"), "-p", "hi", "--grammar", str(grammar)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent,
    )
    assert run.returncode == 1 and run.stdout == ""
    assert f"--grammar {grammar}: invalid grammar" in run.stderr and run.stderr.count("\n") == 1


# --- masks against independent references --------------------------------------------------------

PATTERN = r"[0-9]{2,4}-[a-z]+( [A-Z][a-z]*)?"


def test_regex_mask_is_exactly_the_viable_tokens(smollm, token_texts):
    """At each step, the allowed tokens are those whose text keeps the output a prefix of a match,
    as the `regex` module's partial matching decides over the whole 49152-token vocabulary."""
    import regex

    tokenizer = smollm[1]
    matcher = Constraint.regex(PATTERN).compile(tokenizer).matcher()
    eos = next(iter(tokenizer.eos_token_ids))
    prefix, history = "", []
    for step in range(7):
        want = {i for i, t in enumerate(token_texts) if t and regex.fullmatch(PATTERN, prefix + t, partial=True)}
        got = allowed(matcher)
        assert {i for i in got if token_texts[i] is not None} == want, f"step {step}, output {prefix!r}"
        assert (eos in got) == bool(regex.fullmatch(PATTERN, prefix))
        choice = sorted(want)[len(want) // 2]
        history.append((allowed(matcher), prefix))
        matcher.advance(choice)
        prefix += token_texts[choice]
    # Rolling back restores each earlier state (what speculative decoding relies on).
    for mask, earlier in reversed(history[-3:]):
        matcher.rollback(1)
        assert allowed(matcher) == mask, earlier


def test_valid_prefix_and_copy(smollm):
    tokenizer = smollm[1]
    ids = tokenizer.encode("12-ab Cd", add_special_tokens=False)
    matcher = Constraint.regex(PATTERN).compile(tokenizer).matcher()
    assert matcher.valid_prefix(ids) == len(ids)
    bad = tokenizer.encode("12-ab 9", add_special_tokens=False)
    assert matcher.valid_prefix(bad) == len(bad) - 1
    twin = matcher.copy()
    for t in ids:
        twin.advance(t)
    assert twin.accepting and not matcher.accepting  # the copy moved on alone
    with pytest.raises(ConstraintError, match="token \"x\""):
        matcher.advance(tokenizer.encode("x", add_special_tokens=False)[0])  # a letter cannot start it


def test_apply_token_mask_matches_numpy():
    rng = np.random.default_rng(0)
    for vocab, words in [(100, 4), (96, 3), (100, 3), (70, 3)]:  # exact, wider and narrower masks
        logits = rng.normal(size=(2, vocab)).astype(np.float32)
        bits = rng.integers(0, 2**32, size=(2, words), dtype=np.uint64).astype(np.uint32)
        got = np.array(apply_token_mask(mx.array(logits), mx.array(bits)))
        keep = np.unpackbits(bits.view(np.uint8), bitorder="little").reshape(2, -1).astype(bool)
        keep = np.pad(keep, ((0, 0), (0, max(0, vocab - keep.shape[1]))))[:, :vocab]
        np.testing.assert_array_equal(got, np.where(keep, logits, -np.inf))


def test_batch_mask_rows(smollm):
    tokenizer = smollm[1]
    json_matcher = Constraint.json_object().compile(tokenizer).matcher()
    regex_matcher = Constraint.regex(PATTERN).compile(tokenizer).matcher()
    rows = np.array(batch_mask([json_matcher, None, regex_matcher]))
    np.testing.assert_array_equal(rows[0], np.array(json_matcher.mask())[0])
    assert (rows[1] == 0xFFFFFFFF).all()
    np.testing.assert_array_equal(rows[2], np.array(regex_matcher.mask())[0])


def test_other_tokenizers(gemma3_gguf_path):
    """The vocabulary of a SentencePiece GGUF (Gemma 3, 262144 tokens, rebuilt by transformers'
    converter) and of the fixtures' character-level WordLevel tokenizer, as the engine reads them:
    after each prefix, a regex's mask is the `regex` module's verdict on every token."""
    import regex

    from mlxmodels.gguf import GGUFSource
    from mlxmodels.tokenizer import load_gguf_tokenizer, load_tokenizer

    pattern = r"(yes|no), [0-9]+"
    fixture = Path(__file__).parent / "fixtures" / "models" / "llama3-v5"
    for tokenizer in (load_gguf_tokenizer(GGUFSource(gemma3_gguf_path).tokenizer_metadata, gemma3_gguf_path),
                      load_tokenizer(fixture)):
        hf = tokenizer._tokenizer
        special = set(hf.all_special_ids) | set(hf.added_tokens_decoder)
        pieces = {i: hf.decode([i]) for i in range(len(hf)) if i not in special}
        pieces = {i: p for i, p in pieces.items() if p and "\ufffd" not in p}
        compiled = Constraint.regex(pattern).compile(tokenizer)
        for text in ["", "ye", "no, "]:
            matcher = compiled.matcher()
            for t in tokenizer.encode(text, add_special_tokens=False):
                matcher.advance(t)
            want = {i for i, p in pieces.items() if regex.fullmatch(pattern, text + p, partial=True)}
            got = {i for i in allowed(matcher) if i in pieces}
            assert got <= want, (type(hf).__name__, len(hf), text)  # never a token that breaks the regex
            # SentencePiece's byte-fallback tokens (<0x73> for "s") the engine may leave out where a
            # regular token has the same text: the tokenizer never produces them for such text.
            fallback = {i for i in want if hf.convert_ids_to_tokens(i).startswith("<0x")}
            assert want - got <= fallback, (type(hf).__name__, len(hf), text)
            assert want - fallback, text


# --- generation ----------------------------------------------------------------------------------

def test_constrained_loop_matches_plain_loop_when_nothing_is_excluded(smollm):
    """Greedy decoding under a regex that allows any text gives the plain loop's tokens: the
    pipelined constrained loop changes what is sampled only through the mask."""
    model, tokenizer = smollm
    prompt = format_messages(tokenizer, [{"role": "user", "content": "Name three colours."}])
    plain, plain_stats = generate(model, tokenizer, prompt, max_tokens=24)
    free, free_stats = generate(model, tokenizer, prompt, max_tokens=24, constraint=Constraint.regex(r"[\s\S]*"))
    assert free_stats.tokens == plain_stats.tokens and free == plain


@pytest.mark.parametrize("case", SCHEMAS, ids=[c["name"] for c in SCHEMAS])
def test_schema_output_validates(smollm, case):
    import jsonschema

    model, tokenizer = smollm
    compiled = Constraint.json_schema(case["schema"], case["name"]).compile(tokenizer)
    prompt = schema_prompt(tokenizer, case)
    for seed in range(SEEDS):
        text, stats = generate(model, tokenizer, prompt, max_tokens=MAX_TOKENS,
                               sampling=SamplingParams(temperature=0.7, seed=seed), constraint=compiled)
        assert stats.finish_reason == "stop", (seed, text)
        jsonschema.validate(json.loads(text), case["schema"])


def test_example_instances_are_valid():
    """The fixture's example answers (used by the engine benchmark) satisfy their schemas."""
    import jsonschema

    assert len({c["name"] for c in SCHEMAS}) == 20
    for case in SCHEMAS:
        jsonschema.Draft202012Validator.check_schema(case["schema"])
        jsonschema.validate(case["example"], case["schema"])


def test_regex_and_grammar_output(smollm):
    """A regex's output fully matches (Python's `re`); a Lark grammar's and a GBNF grammar's output
    parse with the `lark` package's own parser."""
    import re

    import lark

    model, tokenizer = smollm
    sampling = SamplingParams(temperature=0.7, seed=3)
    prompt = format_messages(tokenizer, [{"role": "user", "content": "Give a date and a time, e.g. 2024-05-01 13:45."}])
    pattern = r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9] [0-2][0-9]:[0-5][0-9]"
    text, _ = generate(model, tokenizer, prompt, max_tokens=30, sampling=sampling, constraint=Constraint.regex(pattern))
    assert re.fullmatch(pattern, text), text

    lark_grammar = r'''
start: "The answer is " answer "."
answer: NUMBER " " UNIT | "unknown"
NUMBER: /[1-9][0-9]{0,3}/
UNIT: "km" | "miles"
'''
    prompt = format_messages(tokenizer, [{"role": "user", "content": "How far is Paris from London?"}])
    text, _ = generate(model, tokenizer, prompt, max_tokens=30, sampling=sampling, constraint=Constraint.grammar(lark_grammar))
    lark.Lark(lark_grammar).parse(text)

    gbnf = 'root ::= "Colours: " colour (", " colour){0,3} "."\ncolour ::= "red" | "green" | "blue" | "yellow"\n'
    equivalent_lark = 'start: "Colours: " colour (", " colour) ~ 0..3 "."\ncolour: "red" | "green" | "blue" | "yellow"\n'
    prompt = format_messages(tokenizer, [{"role": "user", "content": "List some colours."}])
    text, stats = generate(model, tokenizer, prompt, max_tokens=40, sampling=sampling, constraint=Constraint.grammar(gbnf))
    assert stats.finish_reason == "stop", text
    lark.Lark(equivalent_lark).parse(text)


def test_cli_json_schema(default_model_dir, tmp_path):
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
              "additionalProperties": False}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    run = subprocess.run(
        [sys.executable, "-m", "app.main", "run", "-m", str(default_model_dir), "-p", "Is the sky blue?",
         "--json-schema", str(path), "--temp", "0.7", "--seed", "0", "-q"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) in ({"answer": "yes"}, {"answer": "no"})


def test_cli_warns_when_max_tokens_cuts_the_output_short(default_model_dir):
    run = subprocess.run(
        [sys.executable, "-m", "app.main", "run", "-m", str(default_model_dir), "-p", "Describe a cat.",
         "--json-schema", '{"type": "object", "properties": {"description": {"type": "string"}}, "required": ["description"]}',
         "--max-tokens", "3", "-q"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("{")
    assert ("orchard: warning: the output stopped at 3 tokens, before it was complete (--json-schema); "
            "raise --max-tokens") in run.stderr
