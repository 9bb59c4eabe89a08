"""Between the HTTP handlers and the scheduler: prompts in, outputs out, no MLX on the event loop.

`ServeEngine` turns a validated request into token ids (chat template, message boundaries for the
prefix cache, context limits) and hands it to the `Scheduler`, whose thread owns the model; the
outputs come back through an asyncio queue. A consumer that stops listening (a client that left)
cancels its request, which frees the batch row at the scheduler's next step.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from mlxmodels.generate import context_length, encode_prompt
from mlxmodels.prompt import format_messages
from mlxmodels.sampling import SamplingParams
from mlxmodels.scheduler import Output, Request, Scheduler

# A model that states no context length (recurrent ones) is still bounded, so no request runs forever.
FALLBACK_CONTEXT = 32768
# Message ends used as prefix-cache snapshot points: the first message (a system prompt many
# conversations share) and the last few (where the next turn of this conversation resumes).
BOUNDARY_MESSAGES = 4
# The n-gram size of prompt lookup for requests that ask for speculation (or give a prediction)
# on a server started without --prompt-lookup N.
LOOKUP_NGRAM = 3


class RequestError(Exception):
    """A request the engine refuses: a 400 with this message (`param`: the field at fault)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass
class Prepared:
    request: Request
    prompt_tokens: int
    tool_format: object | None = None  # `tools.ToolFormat` the reply's tool calls are read in


def _message(m) -> dict:
    """A validated message as the chat template (or the tool renderer) takes it."""
    message = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
    if m.tool_calls:
        message["tool_calls"] = m.tool_calls
    if m.tool_call_id is not None:
        message["tool_call_id"] = m.tool_call_id
    if m.name is not None and m.role == "tool":
        message["name"] = m.name
    return message


class ServeEngine:
    def __init__(self, model, tokenizer, scheduler: Scheduler, name: str, sampling_defaults: dict,
                 speculative=None):
        self.model, self.tokenizer, self.scheduler = model, tokenizer, scheduler
        self.name = name
        self.sampling_defaults = sampling_defaults
        # The server's `SpeculativeDecoder` (--draft / --prompt-lookup / --mtp): each request that
        # speculates gets a fork of its proposer.
        self.speculative = speculative
        self.context = context_length(model) or FALLBACK_CONTEXT
        self._outbox: _Outbox | None = None

    # -- preparing requests (blocking: run them off the event loop) --------------------------------

    def prepare_chat(self, body) -> Prepared:
        messages = [_message(m) for m in body.messages]
        tools = self._checked_tools(body)
        if tools or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
            # Tools offered or used earlier: rendered through the family's tool format.
            from mlxmodels.tools import ToolError, render_prompt, tool_format

            fmt = tool_format(self.tokenizer, self.model.info.model_type)
            try:
                ids = encode_prompt(self.tokenizer, render_prompt(self.tokenizer, messages, tools, fmt))
            except ToolError as e:
                raise RequestError(str(e), "messages") from None
            boundaries = ()
        else:
            fmt = None
            ids = self._encode_chat(messages, add_generation_prompt=True)
            boundaries = self._boundaries(messages, ids)
        constraint = self._constraint(body, fmt, tools)
        prepared = self._prepared(body, ids, boundaries)
        prepared.request.constraint = constraint
        prepared.tool_format = fmt if tools else None
        return prepared

    @staticmethod
    def _checked_tools(body) -> list[dict] | None:
        """The tools offered to the model (none with tool_choice "none"), each function's parameters
        checked as a JSON schema the grammar engine can enforce."""
        if not body.tools:
            if body.tool_choice not in (None, "auto", "none"):
                raise RequestError("tool_choice needs tools", "tool_choice")
            return None
        from mlxmodels.constrain import Constraint, ConstraintError
        from mlxmodels.tools import ToolError, check_tools

        try:
            functions = check_tools(body.tools)
            for i, function in enumerate(functions):
                Constraint.json_schema(function.get("parameters") or {"type": "object"},
                                       f"tools[{i}].function.parameters ({function['name']})")
        except (ToolError, ConstraintError) as e:
            raise RequestError(str(e), "tools") from None
        return None if body.tool_choice == "none" else body.tools

    def _constraint(self, body, fmt, tools):
        """What the answer must match, compiled against the tokenizer (a 400 before any work): a call
        of the tools for tool_choice "required" or a named function, else `response_format`."""
        from mlxmodels.constrain import ConstraintError
        from mlxmodels.tools import ToolError, tool_constraint

        param = "response_format"
        try:
            constraint = body.constraint()
            if tools and body.tool_choice not in (None, "auto"):
                if constraint is not None:
                    raise RequestError("response_format cannot be combined with a required tool call",
                                       "response_format")
                param = "tool_choice"
                constraint = tool_constraint(fmt, tools, body.tool_choice, bool(body.parallel_tool_calls))
            if constraint is None:
                return None
            compiled = constraint.compile(self.tokenizer)
            compiled.matcher()  # raises for what only a matcher finds
            return compiled
        except (ConstraintError, ToolError) as e:
            raise RequestError(str(e), param) from None

    def prepare_completion(self, body) -> Prepared:
        prompt = body.prompt[0] if isinstance(body.prompt, list) and isinstance(body.prompt[0], str) else body.prompt
        if isinstance(prompt, str):
            if not prompt:
                raise RequestError("the prompt is empty", "prompt")
            ids = encode_prompt(self.tokenizer, prompt)
        else:
            vocab = self.model_vocab()
            if any(not 0 <= t < vocab for t in prompt):
                raise RequestError(f"prompt token ids must be in [0, {vocab})", "prompt")
            ids = list(prompt)
        return self._prepared(body, ids, ())

    def model_vocab(self) -> int:
        return len(self.tokenizer.get_vocab()) if hasattr(self.tokenizer, "get_vocab") else 1 << 31

    def _encode_chat(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        try:
            text = format_messages(self.tokenizer, messages, add_generation_prompt=add_generation_prompt)
        except Exception as e:  # jinja templates raise for conversations they do not accept
            raise RequestError(f"the model's chat template rejected the messages: {e}", "messages") from None
        return encode_prompt(self.tokenizer, text)

    def _boundaries(self, messages: list[dict], ids: list[int]) -> list[int]:
        """Token positions where some of the messages end, when the template renders them as a prefix
        of the whole prompt (templates that rewrite earlier turns do not)."""
        chosen = sorted({0, *range(max(0, len(messages) - BOUNDARY_MESSAGES), len(messages))})
        ends = []
        for i in chosen:
            try:
                part = self._encode_chat(messages[: i + 1], add_generation_prompt=False)
            except RequestError:
                continue
            if 0 < len(part) < len(ids) and ids[: len(part)] == part:
                ends.append(len(part))
        return ends

    def _prepared(self, body, ids: list[int], boundaries) -> Prepared:
        if not ids:
            raise RequestError("the prompt is empty", "messages" if hasattr(body, "messages") else "prompt")
        room = self.context - len(ids)
        if room < 1:
            raise RequestError(
                f"this model's maximum context length is {self.context} tokens; the prompt has {len(ids)}",
                "messages" if hasattr(body, "messages") else "prompt", "context_length_exceeded")
        limit = body.token_limit()
        if limit is None:
            limit = room
        elif limit > room:
            raise RequestError(
                f"this model's maximum context length is {self.context} tokens; the prompt has {len(ids)} "
                f"and {limit} more were requested (at most {room})", "max_tokens", "context_length_exceeded")
        sampling = SamplingParams(**{**{"temperature": 0.0, "top_p": 1.0}, **self.sampling_defaults,
                                     **body.sampling_overrides()})
        try:
            sampling.validate()
        except Exception as e:
            raise RequestError(str(e)) from None
        request = Request(ids, limit, sampling, body.stop_strings(), body.logprob_count(), boundaries)
        request.speculative = self._speculation(body)
        return Prepared(request, len(ids))

    def _speculation(self, body):
        """The request's `SpeculativeDecoder`, or None. `speculative: false` turns the server's off;
        `true` or `{"num_draft": K}` turn it on (prompt lookup on a server started without one);
        `prediction` makes its text a lookup source (prompt, then prediction, then the answer)."""
        from app.serve_schema import Speculative
        from mlxmodels.proposers import PredictedOutput, PromptLookup
        from mlxmodels.speculative import SpeculativeDecoder

        choice = body.speculative
        if choice is False:
            if body.prediction is not None:
                raise RequestError("prediction works by speculative decoding: drop speculative: false", "prediction")
            return None
        num_draft = choice.num_draft if isinstance(choice, Speculative) else None
        server = self.speculative
        if body.prediction is not None:
            ngram = server.proposer.ngram if server is not None and isinstance(server.proposer, PromptLookup) \
                else LOOKUP_NGRAM
            ids = list(self.tokenizer.encode(body.prediction.text(), add_special_tokens=False))
            return SpeculativeDecoder(PredictedOutput(ids, ngram), num_draft)
        if server is not None:
            return SpeculativeDecoder(server.proposer.fork(), num_draft or server.num_draft, server.adaptive)
        if choice is None:
            return None
        return SpeculativeDecoder(PromptLookup(LOOKUP_NGRAM), num_draft)

    # -- running them ------------------------------------------------------------------------------

    def start(self, request: Request) -> "Running":
        """Submit a request (raises the scheduler's `Busy` or `Closed` at once); call on the event loop."""
        loop = asyncio.get_running_loop()
        if self._outbox is None or self._outbox.loop is not loop:
            self._outbox = _Outbox(loop)
        return Running(self.scheduler, request, self._outbox)

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])


class _Outbox:
    """Outputs crossing from the scheduler thread to the event loop, all of one decode step in one
    wake-up: each `call_soon_threadsafe` writes to the loop's wake-up pipe (a system call on the
    scheduler thread, per token and client); here only the first output of a batch does, and the
    loop hands out whatever has arrived by the time it runs."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, Output]] = []

    def put(self, queue: asyncio.Queue, output: Output) -> None:  # on the scheduler thread
        with self._lock:
            self._pending.append((queue, output))
            if len(self._pending) > 1:
                return  # a hand-out is already on its way
        self.loop.call_soon_threadsafe(self._hand_out)

    def _hand_out(self) -> None:  # on the event loop
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, output in pending:
            queue.put_nowait(output)


class Running:
    """A submitted request, read from the event loop: `await next()` gives its outputs in order;
    `cancel()` (a client that left) frees its batch row at the scheduler's next step."""

    def __init__(self, scheduler: Scheduler, request: Request, outbox: _Outbox):
        self.scheduler = scheduler
        self.queue: asyncio.Queue[Output] = asyncio.Queue()
        self.finished = False
        self.sequence = scheduler.submit(request, lambda output: outbox.put(self.queue, output))

    async def next(self, timeout: float | None = None) -> Output | None:
        """The next output; None if `timeout` seconds pass first."""
        try:
            output = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None
        self.finished = output.finish_reason is not None
        return output

    def cancel(self) -> None:
        if not self.finished:
            self.finished = True
            self.scheduler.cancel(self.sequence)
