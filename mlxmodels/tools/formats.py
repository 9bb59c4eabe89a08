"""The tool-call formats of the model families Orchard loads, one class each.

A format knows where a call begins in the model's reply (`find_start`), how to read the calls
from there (`scan_calls`, also on a reply cut short), and how to force a call with the grammar
engine (`call_grammar`: Lark for llguidance, with each function's arguments constrained by its
JSON schema through `%json`).

- `Hermes`: `<tool_call>{"name": …, "arguments": {…}}</tool_call>` — Qwen 2.5/3, SmolLM3, Hermes,
  and Orchard's fallback for models whose chat template has no tool support.
- `Llama3`: a bare `{"name": …, "parameters": {…}}` reply, optionally after `<|python_tag|>` —
  Llama 3.1/3.2/3.3 JSON tool calling.
- `Mistral`: `[TOOL_CALLS] [{"name": …, "arguments": {…}}, …]`, or `[TOOL_CALLS]name[ARGS]{…}`
  (tokenizer v11 and later).
- `Harmony`: gpt-oss's `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{…}<|call|>`.
"""

from __future__ import annotations

import json
import re

from mlxmodels.constrain import JSON_OPTIONS
from mlxmodels.tools.calls import CallText, new_call_id, scan_call_object, skip_space, value_end


def _schema(function: dict) -> dict:
    """A function's parameters schema, with the JSON layout Orchard generates."""
    schema = dict(function.get("parameters") or {"type": "object"})
    schema.setdefault("x-guidance", JSON_OPTIONS)
    return schema


def _call_schema(functions: list[dict], argument_key: str) -> dict:
    """JSON schema of one `{"name": …, <argument_key>: {…}}` object, any of `functions`."""
    options = [{"type": "object",
                "properties": {"name": {"const": f["name"]}, argument_key: _schema(f)},
                "required": ["name", argument_key], "additionalProperties": False}
               for f in functions]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "x-guidance": JSON_OPTIONS}


def _lark_json(schema: dict) -> str:
    return "%json " + json.dumps(schema)


class ToolFormat:
    name = ""
    markers: tuple[str, ...] = ()
    at_start_only = False  # a call is the whole reply (no marker can appear mid-text)
    id_length: int | None = None

    def __init__(self, native: bool = True, special_tokens: dict | None = None):
        self.native = native  # the chat template renders tools itself
        self.special_tokens = special_tokens or {}  # marker text -> token id, where it is one token

    def new_call_id(self) -> str:
        return new_call_id(self.id_length)

    def find_start(self, text: str, final: bool) -> int | None:
        if self.at_start_only:
            i = skip_space(text, 0)
            return i if any(text.startswith(m, i) for m in self.markers) else None
        found = [i for i in (text.find(m) for m in self.markers) if i >= 0]
        return min(found) if found else None

    def safe_content_end(self, text: str, final: bool) -> int:
        """How much of `text` (no marker in it yet) is surely content: all of it, less a tail that
        may be the beginning of a marker."""
        if final:
            return len(text)
        if self.at_start_only:
            stripped = text.lstrip()
            could_start = any(m.startswith(stripped) or stripped.startswith(m) for m in self.markers)
            return 0 if could_start else len(text)
        hold = 0
        for m in self.markers:
            for k in range(min(len(m) - 1, len(text)), 0, -1):
                if text.endswith(m[:k]):
                    hold = max(hold, k)
                    break
        return len(text) - hold

    def clean_content(self, text: str) -> str:
        return text

    def scan_calls(self, text: str, final: bool) -> list[CallText]:
        raise NotImplementedError

    def token(self, marker: str) -> str:
        """A marker in Lark: the special token itself when it is one (`<[id]>`), else its text."""
        if marker in self.special_tokens:
            return f"<[{self.special_tokens[marker]}]>"
        return json.dumps(marker)

    def call_grammar(self, functions: list[dict], parallel: bool = False) -> str:
        raise NotImplementedError

    def render_call(self, name: str, arguments) -> str:
        """A call written as the model writes it (for prompts of models without tool templates)."""
        raise NotImplementedError


class Hermes(ToolFormat):
    name = "hermes"
    markers = ("<tool_call>",)

    def scan_calls(self, text: str, final: bool) -> list[CallText]:
        calls, i = [], 0
        while True:
            i = text.find("<tool_call>", i)
            if i < 0:
                return calls
            call, end = scan_call_object(text, i + len("<tool_call>"))
            calls.append(call)
            if end is None:
                return calls
            i = end

    def call_grammar(self, functions: list[dict], parallel: bool = False) -> str:
        block = '"<tool_call>\\n" call "\\n</tool_call>"'
        start = 'start: block ("\\n" block)*' if parallel else "start: block"
        return f"{start}\nblock: {block}\ncall: {_lark_json(_call_schema(functions, 'arguments'))}\n"

    def render_call(self, name: str, arguments) -> str:
        return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"

    @staticmethod
    def system_prompt(tools: list[dict]) -> str:
        """Tool instructions for a model whose template has none (the wording Qwen 2.5's template uses)."""
        listing = "\n".join(json.dumps(t) for t in tools)
        return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{listing}\n"
                "</tools>\n\nFor each function call, return a json object with function name and arguments "
                "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


class Llama3(ToolFormat):
    name = "llama3"
    markers = ("<|python_tag|>", '{"name"', '{"type"')
    at_start_only = True

    def scan_calls(self, text: str, final: bool) -> list[CallText]:
        i = skip_space(text, 0)
        if text.startswith("<|python_tag|>", i):
            i += len("<|python_tag|>")
        calls = []
        while True:
            call, end = scan_call_object(text, i)
            if not call.has_arguments:  # a JSON answer with a "name" key is not a call
                return calls + [CallText(None)]
            calls.append(call)
            if end is None:
                return calls
            i = skip_space(text, end)
            if not text.startswith(";", i):  # Llama 3.2 separates parallel calls with ";"
                return calls
            i += 1

    def call_grammar(self, functions: list[dict], parallel: bool = False) -> str:
        call = _lark_json(_call_schema(functions, "parameters"))
        start = 'start: call ("; " call)*' if parallel else "start: call"
        return f"{start}\ncall: {call}\n"

    def render_call(self, name: str, arguments) -> str:
        return json.dumps({"name": name, "parameters": arguments})


class Mistral(ToolFormat):
    name = "mistral"
    markers = ("[TOOL_CALLS]",)
    id_length = 9  # Mistral's chat templates insist on 9-character alphanumeric call ids

    def scan_calls(self, text: str, final: bool) -> list[CallText]:
        calls = []
        for piece in text.split("[TOOL_CALLS]")[1:]:
            i = skip_space(piece, 0)
            if piece.startswith("[", i):  # [{"name": …, "arguments": …}, …]
                i += 1
                while True:
                    call, end = scan_call_object(piece, i)
                    calls.append(call)
                    if end is None:
                        return calls
                    i = skip_space(piece, end)
                    if not piece.startswith(",", i):
                        break
                    i += 1
            else:  # name[ARGS]{…} (or name[CALL_ID]id[ARGS]{…})
                head, args_mark, rest = piece.partition("[ARGS]")
                if not args_mark:
                    calls.append(CallText(None))
                    return calls
                name = head.split("[CALL_ID]")[0].strip()
                start = skip_space(rest, 0)
                end = value_end(rest, start)
                arguments = rest[start:] if end is None else rest[start:end]
                calls.append(CallText(name, arguments.rstrip(), end is not None))
                if end is None:
                    return calls
        return calls

    def call_grammar(self, functions: list[dict], parallel: bool = False) -> str:
        call = _call_schema(functions, "arguments")
        array = {"type": "array", "items": call, "minItems": 1, "x-guidance": JSON_OPTIONS}
        if not parallel:
            array["maxItems"] = 1
        return f"start: {self.token('[TOOL_CALLS]')} \" \" calls\ncalls: {_lark_json(array)}\n"

    def render_call(self, name: str, arguments) -> str:
        return "[TOOL_CALLS] " + json.dumps([{"name": name, "arguments": arguments}])


class Harmony(ToolFormat):
    name = "harmony"
    markers = ("to=functions.",)
    _CHANNEL = re.compile(r"<\|channel\|>(\w+)[^<]*<\|message\|>(.*?)(?=<\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>|$)", re.S)

    def find_start(self, text: str, final: bool) -> int | None:
        i = text.find("to=functions.")
        if i < 0:
            return None
        header = max(text.rfind("<|start|>", 0, i), text.rfind("<|channel|>", 0, i))
        return max(header, 0)

    def clean_content(self, text: str) -> str:
        """The final channel's text (the analysis channel is the model's reasoning, not its answer);
        text with no channel markup at all is passed through."""
        if "<|channel|>" not in text and "<|message|>" not in text:
            return text
        finals = [m.group(2) for m in self._CHANNEL.finditer(text) if m.group(1) == "final"]
        return "".join(finals)

    def safe_content_end(self, text: str, final: bool) -> int:
        if final:
            return len(text)
        cut = len(text)
        opened = text.rfind("<|")  # a special token's text not complete yet
        if opened >= 0 and text.find("|>", opened) < 0:
            cut = opened
        elif text.endswith("<"):
            cut -= 1
        header = text.rfind("<|start|>", 0, cut)  # a message whose recipient is not known yet
        if header >= 0 and text.find("<|message|>", header) < 0:
            cut = header
        return super().safe_content_end(text[:cut], False)

    def scan_calls(self, text: str, final: bool) -> list[CallText]:
        calls = []
        for m in re.finditer(r"to=functions\.([\w.\-]+)", text):
            if m.end() == len(text) and not final:  # the name may go on
                calls.append(CallText(None))
                return calls
            body = text.find("<|message|>", m.end())
            if body < 0:
                calls.append(CallText(m.group(1)))
                return calls
            body += len("<|message|>")
            ends = [j for j in (text.find(t, body) for t in ("<|call|>", "<|end|>", "<|start|>")) if j >= 0]
            end = min(ends) if ends else None
            arguments = text[body:] if end is None else text[body:end]
            if end is None and not final:  # hold back what may be the start of <|call|>
                opened = arguments.rfind("<")
                if opened >= 0 and "|>" not in arguments[opened:] and "<|call|>".startswith(arguments[opened:opened + 8]):
                    arguments = arguments[:opened]
            calls.append(CallText(m.group(1), arguments.strip() if end is not None else arguments.rstrip(),
                                  end is not None or final))
            if end is None:
                return calls
        return calls

    def call_grammar(self, functions: list[dict], parallel: bool = False) -> str:
        t = self.token
        alternatives = " | ".join(f"call_{i}" for i in range(len(functions)))
        rules = [f"start: {t('<|channel|>')} \"commentary to=functions.\" ({alternatives})"]
        for i, f in enumerate(functions):
            rules.append(f"call_{i}: {json.dumps(f['name'] + ' ')} {t('<|constrain|>')} \"json\" "
                         f"{t('<|message|>')} {_lark_json(_schema(f))}")
        return "\n".join(rules) + "\n"

    def render_call(self, name: str, arguments) -> str:
        return f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>{json.dumps(arguments)}<|call|>"


FORMATS = {f.name: f for f in (Hermes, Llama3, Mistral, Harmony)}
