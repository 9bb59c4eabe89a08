"""Tool calling (mlxmodels/tools): reading each family's call format into OpenAI tool calls, whole
and streamed; prompts with tools and tool results; calls forced by a grammar, whose arguments
`jsonschema` validates against the function's schema.

The model outputs parsed here are the formats' own documented examples (Qwen's function-calling
guide, Meta's Llama 3.1 prompt format, Mistral's tool-calling docs, OpenAI's harmony guide).
"""

from __future__ import annotations

import json

import pytest

from mlxmodels.generate import generate, stream_generate
from mlxmodels.sampling import SamplingParams
from mlxmodels.tools import (ToolCallStream, ToolError, parse_reply, render_prompt, tool_constraint,
                             tool_format)
from mlxmodels.tools.formats import Harmony, Hermes, Llama3, Mistral

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                                                    "b": {"type": "integer", "minimum": -1000, "maximum": 1000}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]

# (format, model output, expected content, expected [(name, arguments object)])
EXAMPLES = [
    (Hermes(), 'Let me check.\n<tool_call>\n{"name": "get_current_temperature", "arguments": {"location": '
     '"San Francisco, CA, USA"}}\n</tool_call>\n<tool_call>\n{"name": "get_temperature_date", "arguments": '
     '{"location": "San Francisco, CA, USA", "date": "2024-10-01", "unit": "celsius"}}\n</tool_call>',
     "Let me check.\n", [("get_current_temperature", {"location": "San Francisco, CA, USA"}),
                         ("get_temperature_date", {"location": "San Francisco, CA, USA", "date": "2024-10-01",
                                                   "unit": "celsius"})]),
    (Hermes(), "The answer is 4 < 5, and <b>bold</b>.", "The answer is 4 < 5, and <b>bold</b>.", []),
    (Llama3(), '{"name": "get_current_conditions", "parameters": {"location": "San Francisco, CA", "unit": "Fahrenheit"}}',
     "", [("get_current_conditions", {"location": "San Francisco, CA", "unit": "Fahrenheit"})]),
    (Llama3(), '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}; '
     '{"name": "add", "parameters": {"a": 1, "b": 2}}',
     "", [("get_weather", {"city": "Oslo"}), ("add", {"a": 1, "b": 2})]),
    (Llama3(), "It is sunny in {city}, they say.", "It is sunny in {city}, they say.", []),
    (Llama3(), '{"name": "Ada Lovelace", "born": 1815}', '{"name": "Ada Lovelace", "born": 1815}', []),  # JSON, not a call
    (Mistral(), '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": {"location": "Paris, France", '
     '"format": "celsius"}}]', "", [("get_current_weather", {"location": "Paris, France", "format": "celsius"})]),
    (Mistral(), 'Sure. [TOOL_CALLS]get_current_weather[ARGS]{"location": "Paris"}[TOOL_CALLS]add[ARGS]{"a": 1, "b": 2}',
     "Sure. ", [("get_current_weather", {"location": "Paris"}), ("add", {"a": 1, "b": 2})]),
    (Harmony(), "<|channel|>analysis<|message|>Need to use function get_weather.<|end|><|start|>assistant"
     '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"location":"San Francisco"}<|call|>',
     "", [("get_weather", {"location": "San Francisco"})]),
    (Harmony(), "<|channel|>analysis<|message|>User asks a simple question.<|end|><|start|>assistant"
     "<|channel|>final<|message|>2 + 2 = 4.<|return|>", "2 + 2 = 4.", []),
]


def _reassemble(deltas: list[dict]) -> tuple[str, list[dict]]:
    """OpenAI stream deltas put back together the way clients do (by index, arguments appended)."""
    content, calls = "", {}
    for delta in deltas:
        content += delta.get("content", "")
        for part in delta.get("tool_calls", []):
            call = calls.setdefault(part["index"], {"id": None, "name": None, "arguments": ""})
            if "id" in part:
                assert call["id"] is None, "an id is sent once, with the call's first delta"
                call["id"], call["name"] = part["id"], part["function"]["name"]
                assert part["type"] == "function"
            call["arguments"] += part["function"].get("arguments", "")
    return content, [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("fmt, text, content, calls", EXAMPLES,
                         ids=[f"{e[0].name}-{i}" for i, e in enumerate(EXAMPLES)])
def test_parse_documented_outputs(fmt, text, content, calls):
    reply = parse_reply(fmt, text)
    assert reply.content == content
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == calls
    assert len({c.id for c in reply.tool_calls}) == len(calls)


@pytest.mark.parametrize("fmt, text, content, calls", EXAMPLES,
                         ids=[f"{e[0].name}-{i}" for i, e in enumerate(EXAMPLES)])
def test_streamed_deltas_reassemble_to_the_whole_reply(fmt, text, content, calls):
    for size in (1, 2, 3, 5, 8, 13, len(text)):
        stream = ToolCallStream(fmt)
        deltas = []
        for i in range(0, len(text), size):
            deltas += stream.feed(text[i:i + size])
        deltas += stream.finish()
        got_content, got_calls = _reassemble(deltas)
        assert got_content == content, size
        assert [(c["name"], json.loads(c["arguments"])) for c in got_calls] == calls, size
        assert [c["id"] for c in got_calls] == [c.id for c in stream.calls]


def test_arguments_stream_before_the_call_ends():
    """A client sees the name as soon as it is written and the arguments as they are generated."""
    stream = ToolCallStream(Hermes())
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'
    deltas = stream.feed(text)
    _, calls = _reassemble(deltas)
    assert calls[0]["name"] == "get_weather" and calls[0]["arguments"] == '{"city": "Par'
    deltas += stream.feed('is", "unit": "celsius"}}\n</tool_call>') + stream.finish()
    assert json.loads(_reassemble(deltas)[1][0]["arguments"]) == {"city": "Paris", "unit": "celsius"}


def test_a_call_cut_short_is_still_reported():
    reply = parse_reply(Hermes(), '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par')
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("get_weather", '{"city": "Par')]
    assert reply.tool_calls[0].arguments_object() is None


def test_mistral_call_ids_are_nine_alphanumerics():
    reply = parse_reply(Mistral(), next(e[1] for e in EXAMPLES if e[0].name == "mistral"))
    assert len(reply.tool_calls[0].id) == 9 and reply.tool_calls[0].id.isalnum()


class _Template:
    """A stand-in tokenizer: only the chat template matters to the format choice."""

    def __init__(self, template):
        self.chat_template = template

    def get_vocab(self):
        return {}


@pytest.mark.parametrize("template, model_type, expected, native", [
    ("{% for tool in tools %}{{ tool | tojson }}{% endfor %}<tool_call>", "qwen2", "hermes", True),
    ("{{- '<|python_tag|>' }}{% if tools %}{% endif %}", "llama", "llama3", True),
    ("<|start_header_id|>{% if tools is not none %}{{ tools }}{% endif %}", "llama", "llama3", True),
    ("[AVAILABLE_TOOLS] {{ tools }}[/AVAILABLE_TOOLS][TOOL_CALLS]", "mistral", "mistral", True),
    ("<|start|>assistant<|channel|>{% if tools %}{% endif %}", "gpt_oss", "harmony", True),
    ("<|im_start|>{{ message['content'] }}", "llama", "hermes", False),  # SmolLM2: no tools in its template
])
def test_format_is_chosen_from_the_template(template, model_type, expected, native):
    fmt = tool_format(_Template(template), model_type)
    assert (fmt.name, fmt.native) == (expected, native)


CONVERSATION = [
    {"role": "user", "content": "What's the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
]


def test_prompt_without_a_tool_template(default_model):
    """SmolLM2's template knows no tools: the tools go into the system turn with Hermes-style
    instructions, the earlier call into the assistant's turn, the result into a user turn."""
    _, tokenizer = default_model
    prompt = render_prompt(tokenizer, CONVERSATION, TOOLS)
    system = prompt.split("<|im_end|>")[0]
    assert "<tools>" in system and json.dumps(WEATHER) in system and json.dumps(ADD) in system
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
            '"unit": "celsius"}}\n</tool_call><|im_end|>') in prompt
    assert '<|im_start|>user\n<tool_response>\n{"temperature": 21}\n</tool_response><|im_end|>' in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_prompt_through_a_tool_template(default_model_dir):
    """A template that renders tools gets them, and the calls' arguments as objects (templates
    write them with `tojson`; a JSON string would come out quoted twice)."""
    from mlxmodels.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(default_model_dir)
    tokenizer._tokenizer.chat_template = (
        "{% for t in tools %}TOOL {{ t.function.name }} {{ t.function.parameters | tojson }}{{ '\\n' }}{% endfor %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}"
        "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }} {{ c.function.arguments | tojson }}"
        "</tool_call>{% endfor %}{% if m.role == 'tool' %} ({{ m.tool_call_id }}){% endif %}{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")
    fmt = tool_format(tokenizer)
    assert fmt.native
    prompt = render_prompt(tokenizer, CONVERSATION, TOOLS, fmt)
    assert prompt == (f"TOOL get_weather {json.dumps(WEATHER['function']['parameters'])}\n"
                      f"TOOL add {json.dumps(ADD['function']['parameters'])}\n"
                      "user: What's the weather in Paris?\n"
                      'assistant: <tool_call>get_weather {"city": "Paris", "unit": "celsius"}</tool_call>\n'
                      'tool: {"temperature": 21} (call_1)\n'
                      "assistant:")


@pytest.mark.parametrize("tools, choice, message", [
    (TOOLS, {"type": "function", "function": {"name": "send_email"}}, "names the function 'send_email', which is not in tools"),
    (TOOLS, "always", "tool_choice must be"),
    ([], "required", "needs at least one tool"),
    ({"name": "x"}, "auto", "tools must be a list"),
    ([{"type": "function", "function": {"description": "no name"}}], "auto", "tools[0].function.name"),
    ([{"type": "retrieval"}], "auto", "tools[0] must be"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "tags": {"type": "array", "uniqueItems": True}}}}}], "required",
     "tool 'f' parameters: unsupported JSON schema keyword(s) uniqueItems"),
])
def test_bad_tools_and_tool_choice(tools, choice, message):
    with pytest.raises(Exception) as e:
        tool_constraint(Hermes(), tools, choice)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ToolError) or "parameters" in str(e.value)


def test_bad_arguments_in_history(default_model):
    _, tokenizer = default_model
    bad = [dict(CONVERSATION[1], tool_calls=[{"id": "c", "type": "function",
                                              "function": {"name": "get_weather", "arguments": "{city: Paris"}}])]
    with pytest.raises(ToolError, match="arguments are not valid JSON"):
        render_prompt(tokenizer, [CONVERSATION[0], *bad], TOOLS)


def test_no_constraint_for_auto_and_none():
    assert tool_constraint(Hermes(), TOOLS, "auto") is None
    assert tool_constraint(Hermes(), TOOLS, "none") is None


@pytest.mark.parametrize("fmt_class, call_text, bad_text", [
    (Hermes, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"'),
    (Llama3, '{"name": "add", "parameters": {"a": 2, "b": 3}}', '{"name": "add", "parameters": {"a": 2, "c"'),
    (Mistral, '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 2, "b": 3}}]', '[TOOL_CALLS] [{"name": "mul"'),
    (Harmony, '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo", "unit": "celsius"}',
     '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": 5'),
])
def test_forced_call_grammars(default_model_dir, fmt_class, call_text, bad_text):
    """Each format's grammar, on a vocabulary that has the format's special tokens: the model's own
    way of writing a call is accepted token by token, arguments outside the schema are not."""
    from mlxmodels.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(default_model_dir)
    tokenizer._tokenizer.add_special_tokens(
        {"additional_special_tokens": ["[TOOL_CALLS]", "<|channel|>", "<|constrain|>", "<|message|>"]})
    fmt = fmt_class(special_tokens={t: tokenizer._tokenizer.convert_tokens_to_ids(t)
                                    for t in ("[TOOL_CALLS]", "<|channel|>", "<|constrain|>", "<|message|>")})
    matcher = tool_constraint(fmt, TOOLS, "required").compile(tokenizer).matcher()
    ids = tokenizer.encode(call_text, add_special_tokens=False)
    assert matcher.valid_prefix(ids) == len(ids)
    for t in ids:
        matcher.advance(t)
    assert matcher.accepting
    bad = tokenizer.encode(bad_text, add_special_tokens=False)
    assert matcher.compiled.matcher().valid_prefix(bad) < len(bad)
    reply = parse_reply(fmt, call_text)
    assert len(reply.tool_calls) == 1


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_forced_call_on_smollm2(default_model, choice):
    """SmolLM2 with tool_choice required / named at temperature 0.7: the reply is one call whose
    arguments validate against its function's schema; streamed deltas reassemble to it."""
    import jsonschema

    model, tokenizer = default_model
    fmt = tool_format(tokenizer, model.info.config.get("model_type", ""))
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "What is 12 plus 30?"}], TOOLS, fmt)
    compiled = tool_constraint(fmt, TOOLS, choice).compile(tokenizer)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for seed in range(3):
        stream, deltas, pieces = ToolCallStream(fmt), [], []
        for chunk in stream_generate(model, tokenizer, prompt, max_tokens=80, constraint=compiled,
                                     sampling=SamplingParams(temperature=0.7, seed=seed)):
            pieces.append(chunk.text)
            deltas += stream.feed(chunk.text)
        deltas += stream.finish()
        assert chunk.stats.finish_reason == "stop"
        reply = parse_reply(fmt, "".join(pieces))
        assert len(reply.tool_calls) == 1 and reply.content == ""
        call = reply.tool_calls[0]
        if isinstance(choice, dict):
            assert call.name == "add"
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])
        _, streamed = _reassemble(deltas)
        assert [(c["name"], c["arguments"]) for c in streamed] == [(call.name, call.arguments)]


def test_tool_result_round_trip_on_smollm2(default_model):
    """After a call and its result, the conversation renders and the model answers in text."""
    model, tokenizer = default_model
    prompt = render_prompt(tokenizer, CONVERSATION, TOOLS)
    text, stats = generate(model, tokenizer, prompt, max_tokens=30)
    assert stats.generation_tokens > 0 and text.strip()


def test_chat_shows_a_tool_call_readably(tmp_path, monkeypatch):
    """`orchard chat`: an answer that is a tool call shows the function's name and its arguments
    pretty-printed, not the model's raw markup; the saved message keeps what the model wrote."""
    from test_chat_session import FakeModel
    from test_chat_ui import SIZE, async_test, make_app, send, views, ready

    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path / "data"))
    raw = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'

    @async_test
    async def run():
        app = make_app(tmp_path, fake=FakeModel(reply=lambda m: raw))
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            await send(pilot, "weather in Paris?")
            answer = views(app)[-1]
            assert answer.content == raw
            shown = answer.markdown.source
            assert "<tool_call>" not in shown
            assert "**Tool call** `get_weather`" in shown
            assert '```json\n{\n  "city": "Paris",\n  "unit": "celsius"\n}\n```' in shown
            assert shown.startswith("Checking.")

    run()


def test_parallel_calls_grammar(default_model):
    """parallel=True lets a forced reply hold several calls; without it, one call and then the end."""
    _, tokenizer = default_model
    two = ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
           '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}\n</tool_call>')
    ids = tokenizer.encode(two, add_special_tokens=False)
    single = tool_constraint(Hermes(), TOOLS, "required").compile(tokenizer).matcher()
    parallel = tool_constraint(Hermes(), TOOLS, "required", parallel=True).compile(tokenizer).matcher()
    assert parallel.valid_prefix(ids) == len(ids)
    first = len(tokenizer.encode(two[:two.index("\n<tool_call>", 1)],
                                 add_special_tokens=False))
    assert single.valid_prefix(ids) == first
    assert [c.name for c in parse_reply(Hermes(), two).tool_calls] == ["add", "get_weather"]


def test_chat_shows_a_tool_call_readably():
    from app.chat.widgets import readable_tool_calls

    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
    shown = readable_tool_calls(text)
    assert shown.startswith("Let me check.")
    assert "**Tool call** `get_weather`" in shown
    assert '"city": "Paris",\n  "days": 2' in shown  # the arguments pretty-printed
    assert "<tool_call>" not in shown
    plain = "No tools here: just <b>text</b> and {\"json\": 1}."
    assert readable_tool_calls(plain) == plain
