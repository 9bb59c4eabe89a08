"""Constrained decoding: output that must match a JSON Schema, a regex or a Lark/GBNF grammar.

The grammar engine is llguidance (Rust, no dependencies; it also backs llama.cpp's `--llguidance`
and vLLM's guided decoding): it compiles a constraint lazily against the tokenizer's vocabulary and
computes, for each step, the bitmask of tokens that keep the output a prefix of some valid string.

- `Constraint` says what the output must match (kind + text) and is checked before any model work:
  an invalid schema, regex or grammar, or a schema keyword the engine cannot enforce, is a
  `ConstraintError` with one line naming the problem.
- `Constraint.compile(tokenizer)` binds it to a tokenizer; `.matcher()` gives one `TokenMatcher`
  per sequence (a batch has one per row).
- `TokenMatcher` is a sequence's position in the grammar: `fill_mask` / `mask()` say which tokens
  may come next, `advance(token)` moves on, `rollback(n)` undoes the last n tokens (rejected
  speculative tokens), `valid_prefix(tokens)` counts how many proposed tokens the grammar allows.
- `apply_token_mask(logits, bitmask)` sets disallowed logits to -inf, before any sampling step;
  `batch_mask(matchers)` computes the rows of a batch in parallel on the CPU.

The generation loop (`generate.generate_tokens`) computes the mask for step t+1 on the CPU while
the model computes step t, so a constraint costs little decode time.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxmodels.errors import OrchardError

KINDS = ("json_schema", "json_object", "regex", "grammar")

# JSON is generated as `json.dumps` writes it by default ({"a": 1, "b": [2, 3]}): fixed separators,
# no free whitespace. With free whitespace a small model can loop on newlines inside an object
# until max_tokens; the separators are what models produce unprompted.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class ConstraintError(OrchardError):
    """An invalid or unsupported schema, regex or grammar (nothing was generated)."""


def _one_line(message: str) -> str:
    """llguidance's messages can span lines (source excerpts with a caret): keep the first line,
    plus the `error: ...` detail line of a regex parse error."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "rejected by the grammar engine"
    head = lines[0].removesuffix(":").removesuffix("regex parse error").rstrip(": ")
    detail = next((line[len("error:"):].strip() for line in lines[1:] if line.startswith("error:")), "")
    return f"{head}: {detail}" if detail else head


@dataclass(frozen=True)
class Constraint:
    """What the generated text must match.

    kind: "json_schema" (text: the schema as JSON), "json_object" (any JSON object), "regex"
    (Rust regex syntax, matched against the whole output) or "grammar" (Lark, or GBNF as llama.cpp
    writes it; llguidance's Lark also embeds JSON schemas with `%json {...}`).
    origin: where it came from, for error messages ("--json-schema schema.json").
    """

    kind: str
    text: str = ""
    origin: str = ""

    @classmethod
    def json_schema(cls, schema: dict | str, origin: str = "the JSON schema") -> "Constraint":
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise ConstraintError(f"{origin} is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise ConstraintError(f"{origin} must be a JSON object, got {type(schema).__name__}")
        return cls("json_schema", json.dumps(schema), origin).checked()

    @classmethod
    def json_object(cls, origin: str = "JSON object mode") -> "Constraint":
        return cls("json_object", json.dumps({"type": "object"}), origin)

    @classmethod
    def regex(cls, pattern: str, origin: str = "the regex") -> "Constraint":
        return cls("regex", pattern, origin).checked()

    @classmethod
    def grammar(cls, text: str, origin: str = "the grammar") -> "Constraint":
        return cls("grammar", text, origin).checked()

    def engine_grammar(self) -> str:
        """The constraint in llguidance's own grammar format."""
        from llguidance import LLMatcher

        if self.kind in ("json_schema", "json_object"):
            return LLMatcher.grammar_from_json_schema(self.text, defaults=JSON_OPTIONS)
        if self.kind == "regex":
            return LLMatcher.grammar_from_regex(self.text)
        if self.kind == "grammar":
            from llguidance.gbnf_to_lark import any_to_lark

            try:
                return LLMatcher.grammar_from_lark(any_to_lark(self.text))
            except Exception as e:  # the GBNF converter raises plain exceptions for bad syntax
                raise ConstraintError(f"{self.origin}: invalid grammar: {_one_line(str(e))}") from None
        raise ConstraintError(f"unknown constraint kind {self.kind!r} (expected one of {', '.join(KINDS)})")

    def checked(self, tokenizer=None) -> "Constraint":
        """Self, after the engine has compiled it (against `tokenizer`'s vocabulary if given).

        Warnings count as errors: llguidance warns where it would not enforce something the schema
        asks for (an unknown `format`), and output that may break the schema is what we promise not
        to produce."""
        from llguidance import LLMatcher

        is_error, messages = LLMatcher.validate_grammar_with_warnings(self.engine_grammar(), tokenizer)
        if is_error or messages:
            raise ConstraintError(f"{self.origin}: {self._explain(_one_line(messages[0]))}")
        return self

    def _explain(self, problem: str) -> str:
        what = {"json_schema": "JSON schema", "json_object": "JSON schema", "regex": "regex",
                "grammar": "grammar"}[self.kind]
        unimplemented = "Unimplemented keys: "
        if problem.startswith(unimplemented):
            try:
                keys = ", ".join(json.loads(problem[len(unimplemented):]))
            except ValueError:
                keys = problem[len(unimplemented):]
            return f"unsupported JSON schema keyword(s) {keys} (the grammar engine cannot enforce them)"
        if problem.startswith("Unknown format: "):
            return f"unsupported JSON schema string format {problem[len('Unknown format: '):]!r}"
        where = re.match(r"(?:at )?(\d+)\((\d+)\): ", problem)
        if where:
            # Positions in a regex refer to llguidance's wrapper grammar (`start: /.../`), not to the
            # user's text: drop them there; in a grammar they are the user's line and column.
            rest = problem[where.end():].replace(" (in regex)", "")
            problem = rest if self.kind == "regex" else f"line {where[1]}, column {where[2]}: {rest}"
        return f"invalid {what}: {problem}"

    def compile(self, tokenizer) -> "CompiledConstraint":
        """Bound to `tokenizer` (mlx-lm's TokenizerWrapper or a transformers fast tokenizer)."""
        vocabulary = grammar_tokenizer(tokenizer)
        grammar = self.engine_grammar()
        self.checked(vocabulary)
        return CompiledConstraint(self, grammar, vocabulary)


@dataclass(frozen=True)
class CompiledConstraint:
    constraint: Constraint
    grammar: str  # llguidance's grammar text
    vocabulary: object  # llguidance.LLTokenizer

    def matcher(self) -> "TokenMatcher":
        return TokenMatcher(self)


class TokenMatcher:
    """One sequence's position in a constraint (see the module docstring)."""

    def __init__(self, compiled: CompiledConstraint):
        from llguidance import LLMatcher

        self.compiled = compiled
        self._matcher = LLMatcher(compiled.vocabulary, compiled.grammar, log_level=0)
        self._raise_if_error()
        self.mask_words = (compiled.vocabulary.vocab_size + 31) // 32

    def _raise_if_error(self) -> None:
        if self._matcher.is_error():
            origin = self.compiled.constraint.origin
            raise ConstraintError(f"{origin}: {_one_line(self._matcher.get_error())}")

    def fill_mask(self, row: np.ndarray) -> None:
        """Write the allowed-token bitmask (int32 words, bit i of word w = token 32*w + i) into
        `row`, a C-contiguous int32 array of `mask_words` entries."""
        self._matcher.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)
        self._raise_if_error()

    def mask(self) -> mx.array:
        """The bitmask as a [1, mask_words] array, for `apply_token_mask`."""
        row = np.empty((1, self.mask_words), dtype=np.int32)
        self.fill_mask(row[0])
        return mx.array(row.view(np.uint32))

    def advance(self, token: int) -> None:
        """Consume a chosen token. A token the mask did not allow is a bug in the caller."""
        if not self._matcher.consume_token(token):
            self._raise_if_error()
            raise ConstraintError(f"token {token} does not fit {self.compiled.constraint.origin}")

    def rollback(self, n: int) -> None:
        """Undo the last `n` advanced tokens (speculative tokens the target model rejected)."""
        if n and not self._matcher.rollback(n):
            self._raise_if_error()

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of `tokens`, from the first, the grammar allows in a row (state unchanged)."""
        return self._matcher.validate_tokens(list(tokens))

    def allows(self, token: int) -> bool:
        return self.valid_prefix([token]) == 1

    @property
    def accepting(self) -> bool:
        """The output so far is complete (the end-of-sequence token is allowed)."""
        return self._matcher.is_accepting()

    @property
    def finished(self) -> bool:
        """Nothing but the end-of-sequence token can follow."""
        return self._matcher.is_stopped()

    def copy(self) -> "TokenMatcher":
        twin = object.__new__(TokenMatcher)
        twin.compiled, twin.mask_words = self.compiled, self.mask_words
        twin._matcher = self._matcher.deep_copy()
        return twin


_BITS = None


def apply_token_mask(logits: mx.array, bitmask: mx.array) -> mx.array:
    """`logits` [B, V] with tokens whose bit is clear in `bitmask` [B, W] (uint32) set to -inf.

    Columns past the mask (a model whose embedding is padded beyond the tokenizer) are disallowed."""
    global _BITS
    if _BITS is None:
        _BITS = mx.arange(32, dtype=mx.uint32)
    rows, vocab = logits.shape
    allowed = ((bitmask[:, :, None] >> _BITS) & 1).reshape(rows, -1)
    width = allowed.shape[1]
    if width >= vocab:
        allowed = allowed[:, :vocab]
    else:
        allowed = mx.concatenate([allowed, mx.zeros((rows, vocab - width), dtype=allowed.dtype)], axis=1)
    return mx.where(allowed.astype(mx.bool_), logits, mx.array(-float("inf"), dtype=logits.dtype))


_executor = None


def batch_mask(matchers: list["TokenMatcher | None"]) -> mx.array:
    """[len(matchers), W] bitmask for a batch, rows computed in parallel (llguidance's thread pool);
    a row without a constraint (None) allows every token."""
    global _executor
    from llguidance import LLExecutor

    words = max((m.mask_words for m in matchers if m is not None), default=1)
    out = np.full((len(matchers), words), -1, dtype=np.int32)
    rows = [(m._matcher, i) for i, m in enumerate(matchers) if m is not None]
    if len(rows) == 1:
        matchers[rows[0][1]].fill_mask(out[rows[0][1]])
    elif rows:
        if _executor is None:
            _executor = LLExecutor()
        _executor.unsafe_compute_mask_ptr(rows, out.ctypes.data, words * 4, len(matchers))
        for m in matchers:
            if m is not None:
                m._raise_if_error()
    return mx.array(out.view(np.uint32))


# LLTokenizer per (HF tokenizer, EOS ids): building one walks the whole vocabulary (~0.8 s for
# SmolLM2's 49152 tokens), so a chat or a server pays it once per model.
_vocabularies: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def grammar_tokenizer(tokenizer):
    """llguidance's view of `tokenizer`'s vocabulary, built once and kept while the tokenizer lives."""
    from llguidance import LLTokenizer

    hf = getattr(tokenizer, "_tokenizer", tokenizer)  # mlx-lm's TokenizerWrapper holds the HF one
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ConstraintError(
            f"constrained decoding needs a fast (tokenizers) tokenizer; this model has {type(hf).__name__}"
        )
    eos = sorted(getattr(tokenizer, "eos_token_ids", None) or [])
    if not eos and getattr(hf, "eos_token_id", None) is not None:
        eos = [hf.eos_token_id]
    key = tuple(eos)
    per_tokenizer = _vocabularies.setdefault(hf, {})
    if key not in per_tokenizer:
        try:
            per_tokenizer[key] = LLTokenizer(backend.to_str(), eos_token=eos or None)
        except Exception as first:  # a tokenizer.json llguidance does not read (e.g. a WordLevel model)
            try:
                per_tokenizer[key] = LLTokenizer(_TokenList(hf, eos), eos_token=eos or None)
            except Exception:
                raise ConstraintError(
                    f"the grammar engine cannot read this tokenizer: {_one_line(str(first))}") from None
    return per_tokenizer[key]


class _TokenList:
    """The vocabulary as llguidance's generic tokenizer interface wants it: each token's bytes (as
    the tokenizer decodes it alone), the special ids, and an encode function."""

    def __init__(self, hf, eos: list[int]):
        self.special_token_ids = sorted(set(hf.all_special_ids) | set(getattr(hf, "added_tokens_decoder", {})))
        self.tokens = [hf.decode([i]).encode("utf-8") for i in range(len(hf))]
        self.eos_token_id = eos[0] if eos else hf.eos_token_id
        self.bos_token_id = hf.bos_token_id
        self._hf = hf
        self.is_tokenizer_wrapper = True

    def __call__(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False)
