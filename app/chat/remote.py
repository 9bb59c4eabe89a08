"""`orchard chat --server URL`: the chat UI as a client of a running OpenAI-compatible server.

The app's model and session are replaced at their boundary: `remote_loader` gives a `RemoteModel`
(the served model's name and context length, no weights) and the app makes a `RemoteSession` for it,
which keeps `ChatSession`'s message bookkeeping (send, regenerate, edit) and answers through
POST /v1/chat/completions, streamed. It runs on the app's worker thread like a local generation, so
the UI stays live; Esc closes the stream, which frees the request's batch slot on the server. The
stats (time to first token, tokens/s) are measured here, as a user of the server sees them; the
prompt and cached token counts come from the server's usage, the peak memory from its /health.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from app.served import api_base, auth_headers, error_message, served_models
from mlxmodels.chat_session import UNKNOWN, ChatSession, Turn
from mlxmodels.errors import OrchardError
from mlxmodels.generate import GenerationChunk, GenerationStats

TIMEOUT_SECONDS = 600  # a long prompt on a busy server may take minutes to its first token


@dataclass
class RemoteInfo:
    path: Path  # the served model's name (the status bar shows its last part)
    backend: str
    context_length: int
    config: dict


class RemoteModel:
    """What the chat app needs of a model, for one served by `base` (an OpenAI-compatible /v1 URL)."""

    def __init__(self, base: str, name: str, context: int, api_key: str | None):
        import httpx

        self.base, self.name, self.api_key = base, name, api_key
        host = httpx.URL(base).netloc.decode()
        self.info = RemoteInfo(Path(name), f"server {host}", context, {})
        self.session_class = RemoteSession

    def make_cache(self) -> list:
        return []  # the server keeps the caches

    def headers(self) -> dict:
        return auth_headers(self.api_key)


def remote_loader(url: str, api_key: str | None = None, timeout: float = 10.0) -> Callable:
    """A chat app loader that connects to the server at `url` instead of loading weights."""
    base = api_base(url, "--server")

    def load(reference: str | None, progress: Callable[[str], None]):
        progress(f"connecting to {base}…")
        models = served_models(base, api_key, timeout)
        chosen = models[0] if reference is None else next((m for m in models if m.get("id") == reference), None)
        if chosen is None:
            served = ", ".join(m.get("id", "?") for m in models)
            raise OrchardError(f"the server at {base} does not serve '{reference}' (it serves: {served})")
        return RemoteModel(base, chosen["id"], int(chosen.get("context_length") or 0), api_key), None

    return load


class RemoteSession(ChatSession):
    """A `ChatSession` whose answers come from the server (the conversation is sent whole each turn;
    the server's prefix cache makes the repeated part cheap)."""

    def __post_init__(self):
        super().__post_init__()
        self.used = 0  # context the last turn took, by the server's count

    @property
    def context_used(self) -> int:
        return self.used

    def reset_cache(self) -> None:
        pass  # nothing is cached here

    def _answer(self, should_stop: Callable[[], bool] | None = None,
                on_prefill_progress: Callable[[int, int], None] | None = None) -> Iterator[GenerationChunk]:
        import httpx

        self.params.validate()
        if self.params.speculative != "off":
            raise OrchardError("speculative decoding is the server's business: set it off for a remote chat")
        model: RemoteModel = self.model
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": m["role"], "content": m["content"]} for m in self.messages]
        p = self.params
        body = {"model": model.name, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
                "max_tokens": p.max_tokens, "temperature": p.temperature, "top_p": p.top_p}
        if p.top_k:
            body["top_k"] = p.top_k
        if p.seed is not None:
            body["seed"] = p.seed
        pieces, usage, finish, stopped = [], None, "", False
        first = last = None
        chunks = 0
        start = time.perf_counter()
        try:
            with httpx.Client(timeout=TIMEOUT_SECONDS) as client, client.stream(
                    "POST", f"{model.base}/chat/completions", json=body, headers=model.headers()) as response:
                if response.status_code != 200:
                    response.read()
                    raise OrchardError(f"the server answered {response.status_code}: {error_message(response)}")
                for line in response.iter_lines():
                    if should_stop is not None and should_stop():
                        stopped, finish = True, "cancelled"
                        break  # leaving the stream closes it: the server frees the request
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise OrchardError(f"the server failed: {event['error'].get('message')}")
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        finish = choice.get("finish_reason") or finish
                        if text:
                            last = time.perf_counter()
                            first = first or last
                            chunks += 1
                            pieces.append(text)
                            yield GenerationChunk(text, UNKNOWN)  # a token whose id the server keeps
        except httpx.HTTPError as e:
            raise OrchardError(f"lost the server at {model.base}: {e}") from None
        stats = self._stats(usage, chunks, start, first, last, finish)
        self.used = (usage or {}).get("total_tokens", self.used)
        answer = {"role": "assistant", "content": "".join(pieces)}
        if stopped:
            answer["stopped"] = True
        self.messages.append(answer)
        self.last_turn = Turn(stats, stats.cached_tokens, stats.prompt_tokens, stopped=stopped)
        yield GenerationChunk("", None, stats)

    def _stats(self, usage: dict | None, chunks: int, start: float, first, last, finish: str) -> GenerationStats:
        usage = usage or {}
        prompt = usage.get("prompt_tokens", 0)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        tokens = usage.get("completion_tokens", chunks)
        ttft = (first - start) if first else 0.0
        decode = (last - first) if first and last else 0.0
        return GenerationStats(
            prompt_tokens=prompt - cached, cached_tokens=cached, ttft=ttft,
            prompt_tps=(prompt - cached) / ttft if ttft > 0 else 0.0,
            generation_tokens=tokens, generation_tps=(tokens - 1) / decode if decode > 0 and tokens > 1 else 0.0,
            peak_memory_gb=self._server_memory(), finish_reason=finish,
        )

    def _server_memory(self) -> float:
        import httpx

        try:
            health = httpx.get(f"{self.model.base.removesuffix('/v1')}/health", timeout=5).json()
            return float(health.get("peak_memory_gb") or 0.0)
        except (httpx.HTTPError, ValueError, TypeError):
            return 0.0
