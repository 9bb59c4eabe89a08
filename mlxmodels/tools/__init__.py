"""Tool calling: tools offered to the model through its chat template, its calls read back.

- `tool_format(tokenizer, model_type)` picks the family's format (`formats.py`) from the chat
  template; a model whose template knows no tools gets Hermes-style instructions in its system
  prompt (`native=False`) and is read the same way.
- `render_prompt(tokenizer, messages, tools, fmt)` turns OpenAI-style messages (assistant
  `tool_calls` with JSON-text arguments, `role: tool` results) into the prompt.
- `ToolCallStream` / `parse_reply` (`calls.py`) read calls from the reply as OpenAI deltas / whole.
- `tool_constraint(fmt, tools, tool_choice, tokenizer)`: with `tool_choice` "required" or a named
  function, a grammar that makes the reply a call whose arguments follow the function's schema.
"""

from __future__ import annotations

import json

from mlxmodels.constrain import Constraint
from mlxmodels.errors import OrchardError
from mlxmodels.tools.calls import Reply, ToolCall, ToolCallStream, parse_reply
from mlxmodels.tools.formats import Harmony, Hermes, Llama3, Mistral, ToolFormat

__all__ = ["Reply", "ToolCall", "ToolCallStream", "ToolFormat", "ToolError", "parse_reply", "render_prompt",
           "tool_constraint", "tool_format", "check_tools"]


class ToolError(OrchardError):
    """Malformed `tools`, `tool_choice` or tool messages."""


def _template(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the tool one if there is one
        template = template.get("tool_use") or template.get("default") or ""
    return template or ""


def tool_format(tokenizer, model_type: str = "") -> ToolFormat:
    """The format the model writes tool calls in, judged by its chat template (then its family)."""
    template = _template(tokenizer)
    if "<|channel|>" in template or model_type == "gpt_oss":
        cls, native = Harmony, "tools" in template
    elif "[TOOL_CALLS]" in template or "[AVAILABLE_TOOLS]" in template:
        cls, native = Mistral, True
    elif "<tool_call>" in template:
        cls, native = Hermes, True
    elif "<|python_tag|>" in template or ("<|start_header_id|>" in template and "tools" in template):
        cls, native = Llama3, True
    else:
        cls, native = Hermes, False
    return cls(native=native, special_tokens=_special_tokens(tokenizer, cls.markers + (
        "[TOOL_CALLS]", "<|channel|>", "<|constrain|>", "<|message|>")))


def _special_tokens(tokenizer, texts) -> dict:
    """Marker text -> id for markers that are single tokens of this vocabulary."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    vocab = hf.get_vocab() if hasattr(hf, "get_vocab") else {}
    return {t: vocab[t] for t in texts if t in vocab}


def check_tools(tools) -> list[dict]:
    """OpenAI `tools` checked: each {"type": "function", "function": {"name", "parameters"?}}; the
    functions' definitions are returned."""
    if not isinstance(tools, list):
        raise ToolError(f"tools must be a list, got {type(tools).__name__}")
    functions = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise ToolError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ToolError(f"tools[{i}].function.name must be a non-empty string")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise ToolError(f"tools[{i}].function.parameters ({name}) must be a JSON schema object")
        functions.append(function)
    return functions


def _template_messages(messages: list[dict]) -> list[dict]:
    """OpenAI messages in the shape Hugging Face chat templates read: tool call arguments as
    objects (templates write them with `tojson`), content never None."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("content") is None:
            m["content"] = ""
        if m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                function = dict(call.get("function") or {})
                arguments = function.get("arguments", {})
                if isinstance(arguments, str):
                    try:
                        arguments = json.loads(arguments) if arguments.strip() else {}
                    except ValueError:
                        raise ToolError(f"a tool call's arguments are not valid JSON: {arguments[:60]!r}") from None
                function["arguments"] = arguments
                calls.append({**call, "type": "function", "function": function})
            m["tool_calls"] = calls
        out.append(m)
    return out


def _without_tool_support(messages: list[dict], tools: list[dict] | None, fmt: ToolFormat) -> list[dict]:
    """For a template that knows no tools: instructions in the system prompt, calls written into the
    assistant's text as the format writes them, results as user turns."""
    out = []
    if tools:
        instructions = Hermes.system_prompt(tools)
        if messages and messages[0]["role"] == "system":
            out.append({"role": "system", "content": f"{messages[0]['content']}\n\n{instructions}"})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": instructions})
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [fmt.render_call(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(([m["content"]] if m["content"] else []) + calls)})
        elif m["role"] == "tool":
            result = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1]["content"].startswith("<tool_response>"):
                out[-1] = {"role": "user", "content": out[-1]["content"] + "\n" + result}
            else:
                out.append({"role": "user", "content": result})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def render_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                  fmt: ToolFormat | None = None) -> str:
    """The prompt for a conversation that may offer tools and hold tool calls and their results."""
    from mlxmodels.prompt import format_messages, has_chat_template

    fmt = fmt or tool_format(tokenizer)
    if tools is not None:
        check_tools(tools)
    messages = _template_messages(messages)
    if fmt.native and has_chat_template(tokenizer):
        try:
            return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as e:  # a template's raise_exception(), e.g. roles out of order
            raise ToolError(f"the chat template rejected the messages: {e}") from None
    return format_messages(tokenizer, _without_tool_support(messages, tools, fmt))


def tool_constraint(fmt: ToolFormat, tools: list[dict], tool_choice, parallel: bool = False) -> Constraint | None:
    """The grammar `tool_choice` calls for: None for "auto"/"none"; for "required" a call of any
    tool; for {"type": "function", "function": {"name": N}} a call of N. Arguments follow each
    function's `parameters` schema."""
    functions = check_tools(tools or [])
    if tool_choice in (None, "auto", "none"):
        return None
    if tool_choice == "required":
        chosen = functions
    elif isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
        name = tool_choice["function"].get("name")
        chosen = [f for f in functions if f["name"] == name]
        if not chosen:
            raise ToolError(f"tool_choice names the function {name!r}, which is not in tools")
    else:
        raise ToolError(f"tool_choice must be \"auto\", \"none\", \"required\" or a named function, got {tool_choice!r}")
    if not chosen:
        raise ToolError("tool_choice \"required\" needs at least one tool")
    for f in chosen:  # name the function whose schema the engine refuses
        Constraint.json_schema(f.get("parameters") or {"type": "object"}, f"tool {f['name']!r} parameters")
    # Checked when compiled against the tokenizer: the grammar may name special tokens by id.
    return Constraint("grammar", fmt.call_grammar(chosen, parallel), "the tool call grammar")
