"""A multi-turn chat with one model: messages, parameters, and the model's cache kept across turns.

No UI code here: `app/chat` drives this object from its MLX thread, and tests drive it directly.

Prefix reuse. Every turn renders the whole conversation with the chat template and tokenizes it.
The session knows exactly which tokens its cache holds (`cache_tokens`), so the longest common
prefix of the two says what can be kept; only the rest is prefilled. The cache is rewound to that
prefix by trimming when every layer can (`trim_cache`); when some layer cannot (a sliding-window
cache that has already dropped the positions, or a recurrent state that only supports `copy()`),
the session restores the best snapshot taken with `copy_cache()` at the end of an earlier turn, and
only when none fits does it start from an empty cache.

Context overflow. When the conversation plus the room reserved for the answer exceeds the model's
context, the oldest user/assistant turns are left out of the prompt (the system prompt stays). The
prompt then differs from the cache near its start, so the cache is rebuilt once; later turns reuse it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

from mlxmodels.cache import cache_offset, can_trim_cache, copy_cache, trim_cache
from mlxmodels.errors import ContextLengthError, OrchardError
from mlxmodels.generate import GenerationChunk, GenerationStats, context_length, encode_prompt, stream_generate
from mlxmodels.prompt import format_messages
from mlxmodels.sampling import SamplingParams

UNKNOWN = -1  # a token the cache holds whose id we do not know (never expected): never matches
MAX_SNAPSHOTS = 4  # end-of-turn snapshots kept for caches that cannot rewind (bounded memory)
SPECULATIVE_CHOICES = ("off", "lookup", "mtp", "draft")


@dataclass
class ChatParams:
    """What a conversation lets the user set (stored with it)."""

    # Greedy unless the model's generation_config.json says otherwise (it wins; see app/chat). The
    # default 135M model (Q4_1) has near-ties where it matters: for "What is the capital of France?"
    # its first-token logits are "The" 25.33 vs "L" 25.24, so even temperature 0.2 starts half the
    # answers with "L'Étoile…" (measured 4/8); greedy answers "The capital of France is Paris."
    temperature: float = 0.0
    top_p: float = 0.9
    top_k: int = 0
    max_tokens: int = 512
    seed: int | None = None
    # Speculative decoding (mlxmodels/speculative.py): "off", "lookup" (prompt lookup, n-grams of up
    # to 3 tokens), "mtp" (the model's multi-token-prediction heads) or "draft" (the session's draft
    # model, from `orchard chat --draft`); `num_draft`: the most guesses per pass (0: the default).
    speculative: str = "off"
    num_draft: int = 0

    def validate(self) -> "ChatParams":
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise OrchardError(f"max tokens must be a whole number >= 1, got {self.max_tokens}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise OrchardError(f"seed must be a whole number >= 0 or empty, got {self.seed}")
        if self.speculative not in SPECULATIVE_CHOICES:
            raise OrchardError(f"speculative must be one of {', '.join(SPECULATIVE_CHOICES)}, got {self.speculative!r}")
        if not isinstance(self.num_draft, int) or self.num_draft < 0:
            raise OrchardError(f"draft tokens must be a whole number >= 0 (0: the default), got {self.num_draft}")
        self.sampling().validate()
        return self

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "ChatParams":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass
class Turn:
    """What the last generation did, for the UI's status bar and notices."""

    stats: GenerationStats
    reused_tokens: int  # prompt tokens the cache already held
    new_tokens: int  # prompt tokens prefilled this turn
    dropped_messages: int = 0  # messages newly left out of the prompt to fit the context
    restored_snapshot: bool = False  # the cache was rewound via a snapshot, not by trimming
    stopped: bool = False  # the user stopped it


@dataclass
class _Snapshot:
    tokens: list[int]
    cache: list


@dataclass
class ChatSession:
    model: object
    tokenizer: object
    system_prompt: str = ""
    params: ChatParams = field(default_factory=ChatParams)
    messages: list[dict] = field(default_factory=list)  # {"role", "content"[, "stopped"]}, no system
    answer_reserve: int = 256  # context kept free for the answer when deciding what to drop
    draft: object = None  # a `proposers.DraftModel` for params.speculative == "draft"

    def __post_init__(self):
        self.cache = self.model.make_cache()
        self.cache_tokens: list[int] = []  # exactly the tokens the cache holds, in order
        self.snapshots: list[_Snapshot] = []
        self.dropped = 0  # leading messages left out of the prompt (context overflow)
        self.last_turn: Turn | None = None

    # -- what the UI reads ------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return context_length(self.model)

    @property
    def context_used(self) -> int:
        return len(self.cache_tokens)

    # -- turns ------------------------------------------------------------------------------

    def send(self, text: str, **kwargs) -> Iterator[GenerationChunk]:
        """Add a user message and stream the answer (appended to `messages` when done)."""
        if not text.strip():
            raise OrchardError("the message is empty")
        if self.messages and self.messages[-1]["role"] == "user":
            # The previous answer failed before it began: the new message replaces that prompt.
            self.messages.pop()
        self.messages.append({"role": "user", "content": text})
        return self._answer(**kwargs)

    def regenerate(self, **kwargs) -> Iterator[GenerationChunk]:
        """Answer the last user message again (the previous answer is replaced)."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
        if not self.messages:
            raise OrchardError("there is no message to answer again")
        return self._answer(**kwargs)

    def edit_last(self, text: str, **kwargs) -> Iterator[GenerationChunk]:
        """Replace the last user message (and its answer) with `text` and answer that."""
        if not text.strip():
            raise OrchardError("the message is empty")
        while self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
        if not self.messages:
            raise OrchardError("there is no message to edit")
        self.messages[-1] = {"role": "user", "content": text}
        return self._answer(**kwargs)

    def reset_cache(self) -> None:
        """Forget everything cached (e.g. after the model changed or a generation failed midway)."""
        self.cache = self.model.make_cache()
        self.cache_tokens = []
        self.snapshots = []

    # -- internals --------------------------------------------------------------------------

    def _render(self, start: int) -> list[int]:
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": m["role"], "content": m["content"]} for m in self.messages[start:]
        ]
        return encode_prompt(self.tokenizer, format_messages(self.tokenizer, messages))

    def _fit(self) -> tuple[list[int], int]:
        """Prompt ids that fit the context, and how many more messages had to be dropped for it."""
        limit = self.context_length
        start = min(self.dropped, len(self.messages) - 1)
        ids = self._render(start)
        room = min(self.params.max_tokens, self.answer_reserve)
        # Drop whole user/assistant pairs from the front; never the message being answered.
        while limit and len(ids) + room > limit and start + 2 < len(self.messages):
            start += 2
            ids = self._render(start)
        if limit and len(ids) >= limit:
            raise ContextLengthError(
                f"the message is {len(ids)} tokens with the system prompt, the model's context is "
                f"{limit} tokens (shorten it, or the system prompt)"
            )
        newly = start - self.dropped
        self.dropped = start
        return ids, newly

    def _rewind(self, ids: list[int]) -> tuple[int, bool]:
        """Make the cache hold a prefix of `ids` (at most all but the last); (its length, restored?)."""
        keep_max = len(ids) - 1  # generation needs at least one new token to feed
        p = min(_common_prefix(self.cache_tokens, ids), keep_max)
        if p == len(self.cache_tokens):
            return p, False
        if trim_cache(self.cache, len(self.cache_tokens) - p):
            del self.cache_tokens[p:]
            return p, False
        # The cache cannot rewind that far: the longest usable snapshot (trimmed if it can be).
        best, best_len = None, 0
        for snap in self.snapshots:
            q = min(_common_prefix(snap.tokens, ids), keep_max)
            if q > best_len and can_trim_cache(snap.cache, len(snap.tokens) - q):
                best, best_len = snap, q
        if best is None:
            self.cache = self.model.make_cache()
            self.cache_tokens = []
            return 0, False
        self.cache = copy_cache(best.cache)  # the snapshot stays intact for later rewinds
        trim_cache(self.cache, len(best.tokens) - best_len)
        self.cache_tokens = best.tokens[:best_len]
        return best_len, True

    def _answer(self, should_stop: Callable[[], bool] | None = None,
                on_prefill_progress: Callable[[int, int], None] | None = None) -> Iterator[GenerationChunk]:
        self.params.validate()
        speculative = self._speculative()
        ids, newly_dropped = self._fit()
        reused, restored = self._rewind(ids)
        new_ids = ids[reused:]
        prefilled = 0

        def progress(done: int, total: int) -> None:
            # Between prefill chunks: a long prompt can be stopped before its first token.
            nonlocal prefilled
            prefilled = done
            if done == total - 1:
                # A cache that cannot rewind all the way (recurrent state, sliding windows) is
                # snapshotted where the prompt ends: regenerating, and the next turn, resume here.
                tokens = self.cache_tokens + new_ids[:done]
                if not can_trim_cache(self.cache, len(tokens)):
                    self._snapshot(tokens)
            if on_prefill_progress is not None:
                on_prefill_progress(done, total)
            if should_stop is not None and should_stop():
                raise _StopDuringPrefill

        pieces, stats = [], None
        try:
            for chunk in stream_generate(
                self.model, self.tokenizer, new_ids, max_tokens=self.params.max_tokens,
                sampling=self.params.sampling(), cache=self.cache, should_stop=should_stop,
                on_prefill_progress=progress, prefix_ids=[t for t in self.cache_tokens if t != UNKNOWN],
                speculative=speculative,
            ):
                pieces.append(chunk.text)
                stats = chunk.stats or stats
                yield chunk
        except _StopDuringPrefill:
            # The cache holds the chunks prefilled so far: keep them for the next attempt.
            if cache_offset(self.cache) == len(self.cache_tokens) + prefilled:
                self.cache_tokens += new_ids[:prefilled]
            else:
                self.reset_cache()
            stats = GenerationStats(prompt_tokens=prefilled, cached_tokens=reused, finish_reason="cancelled")
            self.last_turn = Turn(stats, reused, prefilled, newly_dropped, restored, stopped=True)
            return  # no answer: the prompt stays last, for regenerate (or replaced by the next send)
        except BaseException:
            # Whatever the cache holds now is unknown (a failed or abandoned generation).
            self.reset_cache()
            raise
        self._record(new_ids, stats)
        stopped = stats.finish_reason == "cancelled"
        answer = {"role": "assistant", "content": "".join(pieces)}
        if stopped:
            answer["stopped"] = True
        self.messages.append(answer)
        self.last_turn = Turn(stats, reused, len(new_ids), newly_dropped, restored, stopped)

    def _speculative(self):
        """The speculative decoder params.speculative asks for (None: off). The draft model is the
        session's own, so its cache carries over from turn to turn as the model's does."""
        from mlxmodels.proposers import MTPHeads, PromptLookup
        from mlxmodels.speculative import SpeculativeDecoder

        kind = self.params.speculative
        if kind == "off":
            return None
        if kind == "draft" and self.draft is None:
            raise OrchardError("speculative 'draft' needs a draft model: start the chat with --draft MODEL")
        proposer = {"lookup": PromptLookup, "mtp": lambda: MTPHeads(self.model), "draft": lambda: self.draft}[kind]()
        return SpeculativeDecoder(proposer, self.params.num_draft or None)

    def _record(self, new_ids: list[int], stats: GenerationStats) -> None:
        """Update `cache_tokens` to what the cache really holds after a generation."""
        self.cache_tokens += list(new_ids) + list(stats.tokens)
        # The pipelined decoder also feeds the token it stopped on (an EOS it did not emit).
        extra = cache_offset(self.cache) - len(self.cache_tokens)
        if extra < 0:  # cannot happen with an honest cache; refuse to guess
            self.reset_cache()
            return
        # That is the EOS id generated (a model may have several: Llama 3's <|eot_id|> and
        # <|end_of_text|>), so the next turn's template, which closes the answer with it, matches.
        fed = [] if stats.stop_token is None else [stats.stop_token]
        self.cache_tokens += (fed + [UNKNOWN] * extra)[:extra]
        if not can_trim_cache(self.cache, len(self.cache_tokens)):
            self._snapshot(self.cache_tokens)

    def _snapshot(self, tokens: list[int]) -> None:
        self.snapshots.append(_Snapshot(list(tokens), copy_cache(self.cache)))
        del self.snapshots[:-MAX_SNAPSHOTS]


class _StopDuringPrefill(Exception):
    """Raised from the prefill progress callback to stop before the first token."""


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
