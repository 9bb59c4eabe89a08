"""Tool calls as the OpenAI API has them, and the incremental reading of them from model output.

Every format (`formats.py`) reduces a model's reply to the same shape: text before the first call
marker is content; after it come calls, each a name and the raw JSON text of its arguments. The
stream (`ToolCallStream`) turns that into OpenAI chat-completion deltas: content pieces, then per
call a first delta with id, type and name, and argument pieces that concatenate to the arguments.
`parse_reply` is the same stream run over a whole reply, so the streamed and whole forms agree.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass, field


@dataclass
class ToolCall:
    name: str
    arguments: str  # the arguments as JSON text, as OpenAI's `function.arguments`
    id: str = ""

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def arguments_object(self):
        """The arguments parsed (None when the model wrote JSON that does not parse)."""
        try:
            return json.loads(self.arguments)
        except ValueError:
            return None


@dataclass
class Reply:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class CallText:
    """One call as far as the output goes: `arguments` may be a prefix while `complete` is False."""

    name: str | None
    arguments: str = ""
    complete: bool = False
    has_arguments: bool = False  # an arguments key was written (some formats need one to be a call)


def new_call_id(alphanumeric_length: int | None = None) -> str:
    """An id for a call: OpenAI-like "call_…", or exactly n letters and digits (Mistral's templates
    refuse any other id)."""
    if alphanumeric_length:
        alphabet = string.ascii_letters + string.digits
        return "".join(secrets.choice(alphabet) for _ in range(alphanumeric_length))
    return "call_" + secrets.token_hex(12)


# --- a forgiving scanner for JSON written by a model, possibly cut short ------------------------

def skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def value_end(text: str, i: int) -> int | None:
    """Index just past the JSON value starting at `i`, or None if the text ends inside it."""
    if i >= len(text):
        return None
    opener = text[i]
    if opener == '"':
        j = i + 1
        while j < len(text):
            if text[j] == "\\":
                j += 2
                continue
            if text[j] == '"':
                return j + 1
            j += 1
        return None
    if opener in "{[":
        depth, j, in_string = 0, i, False
        while j < len(text):
            c = text[j]
            if in_string:
                if c == "\\":
                    j += 1
                elif c == '"':
                    in_string = False
            elif c == '"':
                in_string = True
            elif c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return None
    j = i  # a number, true, false or null: ends at a delimiter
    while j < len(text) and text[j] not in ",}] \t\r\n":
        j += 1
    return j if j < len(text) else None


def scan_call_object(text: str, i: int, argument_keys=("arguments", "parameters")) -> tuple[CallText, int | None]:
    """A `{"name": ..., "arguments": {...}}` object at `i`: the call so far, and the index past the
    object (None while it is incomplete). Keys may come in either order; others are skipped."""
    call = CallText(None)
    i = skip_space(text, i)
    if i >= len(text) or text[i] != "{":
        return call, None
    i += 1
    while True:
        i = skip_space(text, i)
        if i >= len(text):
            return call, None
        if text[i] == "}":
            call.complete = call.name is not None
            return call, i + 1
        if text[i] == ",":
            i += 1
            continue
        key_end = value_end(text, i)
        if key_end is None or text[i] != '"':
            return call, None
        key = json.loads(text[i:key_end])
        i = skip_space(text, key_end)
        if i >= len(text) or text[i] != ":":
            return call, None
        start = skip_space(text, i + 1)
        end = value_end(text, start)
        if key == "name":
            if end is None:
                return call, None
            call.name = str(json.loads(text[start:end]))
        elif key in argument_keys:
            call.has_arguments = True
            raw = text[start:] if end is None else text[start:end]
            if raw.startswith('"'):  # arguments written as a JSON string holding JSON: whole only
                call.arguments = "" if end is None else json.loads(raw)
            else:
                call.arguments = raw.rstrip() if end is None else raw
            if end is None:
                return call, None
        if end is None:
            return call, None
        i = end


# --- the stream ----------------------------------------------------------------------------------

class ToolCallStream:
    """Feeds on text pieces of a reply, gives OpenAI deltas: {"content": ...} or {"tool_calls": [...]}."""

    def __init__(self, fmt):
        self.fmt = fmt
        self.text = ""
        self.content_sent = 0  # characters of content already given out
        self.start: int | None = None  # where the first call marker begins
        self.sent: list[tuple[str, str]] = []  # per call: (id, argument text already given out)
        self.calls: list[ToolCall] = []  # calls complete so far

    def feed(self, piece: str) -> list[dict]:
        self.text += piece
        return self._deltas(final=False)

    def finish(self) -> list[dict]:
        """The rest, at the end of the reply (a call cut short by max_tokens is given as it is)."""
        return self._deltas(final=True)

    def _deltas(self, final: bool) -> list[dict]:
        out = []
        if self.start is None:
            self.start = self.fmt.find_start(self.text, final)
            safe = self.start if self.start is not None else self.fmt.safe_content_end(self.text, final)
            content = self.fmt.clean_content(self.text[:safe])
            if len(content) > self.content_sent:
                out.append({"content": content[self.content_sent:]})
                self.content_sent = len(content)
            if self.start is None:
                return out
        calls = self.fmt.scan_calls(self.text[self.start:], final)
        if final and not self.sent and not any(c.name for c in calls):
            # A marker after all not followed by a call: the text is the answer.
            rest = self.fmt.clean_content(self.text)[self.content_sent:]
            return out + ([{"content": rest}] if rest else [])
        for index, call in enumerate(calls):
            if call.name is None:
                break
            if index == len(self.sent):
                self.sent.append((self.fmt.new_call_id(), ""))
                out.append({"tool_calls": [{"index": index, "id": self.sent[index][0], "type": "function",
                                            "function": {"name": call.name, "arguments": ""}}]})
            call_id, given = self.sent[index]
            arguments = call.arguments
            if (call.complete or final) and not arguments.strip():
                arguments = "{}"  # a call without arguments
            # Argument text only grows (a format gives text it may still change only once complete).
            if len(arguments) > len(given) and arguments.startswith(given):
                out.append({"tool_calls": [{"index": index, "function": {"arguments": arguments[len(given):]}}]})
                self.sent[index] = (call_id, arguments)
            if (call.complete or final) and index == len(self.calls):
                self.calls.append(ToolCall(call.name, self.sent[index][1], call_id))
        return out


def parse_reply(fmt, text: str) -> Reply:
    """The whole reply: its content and its tool calls (through the same stream as streaming)."""
    stream = ToolCallStream(fmt)
    deltas = stream.feed(text) + stream.finish()
    content = "".join(d.get("content", "") for d in deltas)
    return Reply(content, stream.calls)
