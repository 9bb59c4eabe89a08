"""`orchard serve` end to end: a real server process on 127.0.0.1 (an ephemeral port), driven by the
official `openai` client (and by raw HTTP where a client would refuse to send the request).

The answers are checked against what Orchard gives without the server: `orchard run` (the same chat
template and greedy decoding) and the same request sent alone. Tiny max_tokens keep it quick.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from conftest import FIXTURES

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120  # seconds: a loaded machine imports MLX and the model slowly


class Server:
    def __init__(self, args: list[str]):
        self.process = subprocess.Popen([sys.executable, "-m", "app.main", "serve", "--port", "0", *args],
                                        cwd=REPO, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        ready = threading.Event()

        def read() -> None:  # drains stderr (a full pipe would block the server) and finds the address
            for line in self.process.stderr:
                self.log.append(line)
                if "orchard serve:" in line and " on http://" in line:
                    self.base = line.split(" on ")[1].split()[0]  # http://127.0.0.1:PORT/v1
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(START_TIMEOUT):
            self.stop()
            raise RuntimeError("the server did not start:\n" + "".join(self.log))
        self.root = self.base.removesuffix("/v1")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.root}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the server does not answer /health:\n" + "".join(self.log))

    def client(self, api_key: str = "none") -> openai.OpenAI:
        # No retries: a 429 must reach the test, not be retried away.
        return openai.OpenAI(base_url=self.base, api_key=api_key, max_retries=0, timeout=120)

    def health(self) -> dict:
        return httpx.get(f"{self.root}/health", timeout=10).json()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(60)


@pytest.fixture(scope="module")
def smollm(default_model_dir):
    server = Server(["--model", str(default_model_dir), "--model-name", "smollm2", "--quiet"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiny():
    """A random-weight fixture (64-token context, instant answers) behind an API key, 4 at a time."""
    server = Server(["--model", str(FIXTURES / "llama3-v5"), "--api-key", "secret", "--max-concurrency", "4",
                     "--max-queue", "4", "--quiet"])
    yield server
    server.stop()


def chat(client, content, model="smollm2", **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          temperature=0, **kwargs)


# -- the API, on SmolLM2 -----------------------------------------------------------------------------------


def test_models_list(smollm):
    models = smollm.client().models.list()
    assert [m.id for m in models.data] == ["smollm2"]


def test_chat_greedy_equals_orchard_run(smollm, default_model_dir):
    prompt = "What is the capital of France?"
    run = subprocess.run([sys.executable, "-m", "app.main", "run", "-m", str(default_model_dir), "--prompt", prompt,
                          "--temp", "0", "--max-tokens", "8", "--quiet"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    reply = chat(smollm.client(), prompt, max_tokens=8)
    assert reply.choices[0].message.content == run.stdout.removesuffix("\n")
    # "The capital of France is Paris." is 7 tokens and the end-of-sequence token.
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens == 7
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 7 and reply.usage.prompt_tokens > 10


def test_streaming_gives_the_same_answer_and_usage(smollm):
    client = smollm.client()
    whole = chat(client, "Name three colours.", max_tokens=6)
    chunks = list(chat(client, "Name three colours.", max_tokens=6, stream=True,
                       stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_completions_streaming_and_not(smollm):
    client = smollm.client()
    whole = client.completions.create(model="smollm2", prompt="The sea is", max_tokens=5, temperature=0)
    pieces = client.completions.create(model="smollm2", prompt="The sea is", max_tokens=5, temperature=0,
                                       stream=True)
    assert "".join(c.choices[0].text for c in pieces) == whole.choices[0].text
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 5


def test_stop_strings_end_the_answer(smollm):
    client = smollm.client()
    full = chat(client, "What is the capital of France?", max_tokens=8).choices[0].message.content
    stop = full[6:9]
    stopped = chat(client, "What is the capital of France?", max_tokens=8, stop=[stop, "zzz"])
    assert stopped.choices[0].message.content == full[: full.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_repeated_prefix_is_cached(smollm):
    client = smollm.client()
    system = "You are a helpful assistant who answers in one short sentence. " * 4
    first = client.chat.completions.create(
        model="smollm2", max_tokens=2, temperature=0,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hi!"}])
    second = client.chat.completions.create(
        model="smollm2", max_tokens=2, temperature=0,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Name a fruit."}])
    assert first.usage.prompt_tokens_details.cached_tokens < 10
    assert second.usage.prompt_tokens_details.cached_tokens > 40  # the system prompt and more


def test_long_shared_prefix_is_reused_and_answers_as_uncached(smollm, default_model):
    """Two prompts (token ids) share their first 1,000+ tokens: the second reuses the first's cache,
    rewound to where they part, and still decodes exactly what a fresh cache gives in-process."""
    import itertools

    import mlx.core as mx

    from mlxmodels.generate import generate_tokens
    from mlxmodels.sampling import make_sampler, SamplingParams

    model, tokenizer = default_model
    text = "The orchard has apple, pear and plum trees; each row is watered at dawn. "
    prefix = tokenizer.encode(text * 70)[:1000]
    first, second = prefix + tokenizer.encode(" Apples are"), prefix + tokenizer.encode(" Plums are")
    client = smollm.client()
    a = client.completions.create(model="smollm2", prompt=first, max_tokens=6, temperature=0)
    b = client.completions.create(model="smollm2", prompt=second, max_tokens=6, temperature=0)
    assert a.usage.prompt_tokens_details.cached_tokens < 10
    assert b.usage.prompt_tokens_details.cached_tokens >= 1000
    tokens = generate_tokens(model, mx.array(second, dtype=mx.uint32), model.make_cache(),
                             make_sampler(SamplingParams(temperature=0.0)), [])
    expected = list(itertools.islice(tokens, b.usage.completion_tokens))
    # The streaming detokenizer (mlx-lm's, as in `orchard run` and mlx_lm.server) drops the answer's
    # leading space.
    assert b.choices[0].text == tokenizer.decode(expected).removeprefix(" ")


def test_same_answer_alone_and_among_seven_others(smollm):
    client = smollm.client()
    question = "Why is the sky blue?"
    alone = chat(client, question, max_tokens=8).choices[0].message.content
    others = ["Name a fruit.", "Say hi.", "What is 3+4?", "Who wrote Hamlet?", "Describe rain.",
              "Name a planet.", "What is a cat?"]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(chat, client, q, max_tokens=8, stream=False) for q in others]
        together = pool.submit(chat, client, question, max_tokens=8)
        assert together.result().choices[0].message.content == alone
        assert all(f.result().choices[0].finish_reason in ("stop", "length") for f in futures)


def test_seeded_sampling_repeats(smollm):
    client = smollm.client()
    answers = {client.chat.completions.create(
        model="smollm2", max_tokens=6, temperature=0.9, top_p=0.95, seed=11,
        messages=[{"role": "user", "content": "Tell me a story."}]).choices[0].message.content for _ in range(2)}
    assert len(answers) == 1


def test_multipart_content_renders_like_a_string(smollm):
    client = smollm.client()
    plain = chat(client, "Say hello to Ada.", max_tokens=5).choices[0].message.content
    parts = client.chat.completions.create(
        model="smollm2", max_tokens=5, temperature=0,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello "},
                                               {"type": "text", "text": "to Ada."}]}])
    assert parts.choices[0].message.content == plain


def test_logprobs(smollm):
    reply = chat(smollm.client(), "Say hi.", max_tokens=3, logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert len(content) == 3
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 2
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob, abs=1e-6)  # greedy: the top one


PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "pets"],
          "properties": {"name": {"type": "string", "maxLength": 20},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "pets": {"type": "array", "maxItems": 2, "items": {"enum": ["cat", "dog", "fish"]}}}}


def test_response_format_json_schema_beside_a_free_request(smollm):
    """A constrained request (sampled at 0.7) validates with `jsonschema`; a greedy request batched
    with it answers as it does alone."""
    import jsonschema

    client = smollm.client()
    alone = chat(client, "Why is the sky blue?", max_tokens=8).choices[0].message.content

    def person(seed):
        return client.chat.completions.create(
            model="smollm2", max_tokens=80, temperature=0.7, seed=seed,
            messages=[{"role": "user", "content": "Invent a person."}],
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})

    with ThreadPoolExecutor(3) as pool:
        people = [pool.submit(person, seed) for seed in (1, 2)]
        free = pool.submit(chat, client, "Why is the sky blue?", max_tokens=8)
        assert free.result().choices[0].message.content == alone
        for reply in people:
            choice = reply.result().choices[0]
            assert choice.finish_reason == "stop"
            jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_response_format_json_object_streams_an_object(smollm):
    chunks = chat(smollm.client(), "Describe a cat.", max_tokens=60, stream=True,
                  response_format={"type": "json_object"})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("response_format, words", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "string", "format": "no-such-format"}}}}}, "no-such-format"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "minProperties": "two"}}},
     "minProperties"),
    ({"type": "json_schema", "json_schema": "not an object"}, "json_schema"),
    ({"type": "yaml"}, "yaml"),
])
def test_bad_response_format_is_a_400_naming_it(smollm, response_format, words):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "response_format": response_format}
    response = httpx.post(f"{smollm.base}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format" and words in error["message"]


WEATHER_PARAMETERS = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                      "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["c", "f"]}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                            "parameters": WEATHER_PARAMETERS}}


def test_required_tool_call_whole_streamed_and_answered(smollm):
    import jsonschema

    client = smollm.client()
    question = {"role": "user", "content": "What is the weather in Paris?"}
    ask = dict(model="smollm2", max_tokens=80, temperature=0, tools=[WEATHER], tool_choice="required",
               messages=[question])
    first = client.chat.completions.create(**ask)
    whole = first.choices[0]
    assert whole.finish_reason == "tool_calls" and len(whole.message.tool_calls) == 1
    call = whole.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)

    chunks = list(client.chat.completions.create(stream=True, **ask))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert {d.index for d in deltas} == {0} and deltas[0].id and deltas[0].type == "function"
    assert "".join(d.function.name or "" for d in deltas) == call.function.name
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    result = {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21})}
    answer = client.chat.completions.create(model="smollm2", max_tokens=6, temperature=0, tools=[WEATHER],
                                            messages=[question, whole.message.model_dump(exclude_none=True), result])
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # The call and its result went into the prompt (through the template).
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens + len(call.function.arguments) // 4


@pytest.mark.parametrize("extra, param, words", [
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools", "name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "format": "no-such-format"}}}}}]}, "tools",
     "no-such-format"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice",
     "missing"),
    ({"tool_choice": "required"}, "tool_choice", "tools"),
])
def test_bad_tools_are_a_400_naming_them(smollm, extra, param, words):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], **extra}
    response = httpx.post(f"{smollm.base}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"]


def test_client_that_leaves_mid_stream_frees_its_slot(smollm):
    # A plain continuation of a count: it goes on far longer than the test reads (a chat answer
    # may end within a second on an idle machine, before the first chunk is read).
    body = {"model": "smollm2", "stream": True, "max_tokens": 4000, "temperature": 0,
            "prompt": "".join(f"{i}\n" for i in range(1, 40))}
    with httpx.stream("POST", f"{smollm.base}/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()  # held: a line iterator left to the garbage collector closes the stream
        for line in lines:
            if line.startswith("data: ") and '"text": "' in line and '"text": ""' not in line:
                break
        assert smollm.health()["running"] == 1
    deadline = time.monotonic() + 20
    while smollm.health()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert smollm.health()["running"] == 0


# -- hostile requests, on a tiny fixture ----------------------------------------------------------------------


def raw(server, body: bytes | str, path="/chat/completions", key="secret"):
    return httpx.post(f"{server.base}{path}", content=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def good(server) -> str:
    reply = server.client("secret").chat.completions.create(
        model="llama3-v5", messages=[{"role": "user", "content": "hello"}], max_tokens=6, temperature=0)
    return reply.choices[0].message.content


def assert_openai_error(response, status: int, param: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param


def test_hostile_requests_get_4xx_and_leave_the_server_well(tiny):
    before = good(tiny)
    assert_openai_error(raw(tiny, b"{not json"), 400)
    assert_openai_error(raw(tiny, b"\xff\xfe"), 400)
    assert_openai_error(raw(tiny, "[1, 2]"), 400)
    message = [{"role": "user", "content": "hi"}]
    cases = [
        ({"model": "llama3-v5", "messages": message, "max_tokens": 10**9}, "max_tokens"),
        ({"model": "llama3-v5", "messages": message, "temperature": -1}, "temperature"),
        ({"model": "llama3-v5", "messages": message, "max_tokens": "many"}, "max_tokens"),
        ({"model": "llama3-v5", "messages": "hi"}, "messages"),
        ({"model": "llama3-v5", "messages": []}, "messages"),
        ({"model": "llama3-v5", "messages": [{"role": "wizard", "content": "hi"}]}, None),
        ({"model": "llama3-v5", "messages": message, "n": 3}, "n"),
        ({"model": "llama3-v5", "messages": message, "top_p": 0}, "top_p"),
        ({"model": "llama3-v5", "messages": [{"role": "user", "content": "x" * 5000}]}, "messages"),
        ({"messages": message}, "model"),
    ]
    for body, param in cases:
        assert_openai_error(raw(tiny, json.dumps(body)), 400, param)
    assert_openai_error(raw(tiny, json.dumps({"model": "gpt-9", "messages": message})), 404, "model")
    assert_openai_error(raw(tiny, json.dumps({"model": "llama3-v5", "prompt": ""}), "/completions"), 400)
    assert_openai_error(raw(tiny, b'{"model": "llama3-v5", "messages": ["' + b"x" * (10 << 20) + b'"]}'), 413)
    chunked = (b"x" * (1 << 20) for _ in range(10))  # no Content-Length: the limit holds while reading
    assert_openai_error(raw(tiny, chunked), 413)
    assert_openai_error(raw(tiny, json.dumps({"model": "llama3-v5", "messages": message}), key="wrong"), 401)
    with pytest.raises(openai.BadRequestError):
        tiny.client("secret").chat.completions.create(model="llama3-v5", messages=message, temperature=-1)
    with pytest.raises(openai.AuthenticationError):
        tiny.client("wrong").models.list()
    assert tiny.health()["status"] == "ok"
    assert good(tiny) == before


def test_sixty_four_at_once_with_four_slots(tiny):
    before = good(tiny)
    body = json.dumps({"model": "llama3-v5", "messages": [{"role": "user", "content": "hello"}],
                       "max_tokens": 6, "temperature": 0})
    with ThreadPoolExecutor(64) as pool:
        responses = list(pool.map(lambda _: raw(tiny, body), range(64)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 4
    for r in responses:
        if r.status_code == 429:
            assert r.headers["Retry-After"] and r.json()["error"]["type"] == "rate_limit_error"
        else:
            assert r.json()["choices"][0]["message"]["content"] == before
    assert tiny.health() == {**tiny.health(), "status": "ok", "running": 0}
    assert good(tiny) == before


def test_bench_serve_against_a_running_server(tiny, capsys):
    """`bench serve --url` takes the server's root or its /v1 URL and the server's API key; a wrong
    key, a server that is not there or a URL without a scheme is one line, exit 1."""
    from app.main import main

    common = ["bench", "serve", "-m", str(FIXTURES / "llama3-v5"), "-c", "1", "-n", "1", "-p", "8", "-g", "2"]
    assert main([*common, "--url", tiny.root, "--api-key", "secret", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["engines"]["orchard"][0]["failed"] == 0
    for url, key, message in ((tiny.base, "wrong", f"the server at {tiny.base} answered 401"),
                              ("http://127.0.0.1:9", None, "cannot reach the server at http://127.0.0.1:9/v1"),
                              ("127.0.0.1:8080", None, "--url 127.0.0.1:8080: give an http:// or https:// URL")):
        assert main([*common, "--url", url] + (["--api-key", key] if key else [])) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_bench_serve_passes_kv_bits_to_the_server_it_starts(capsys, monkeypatch):
    from app import serve_bench
    from app.main import main

    commands = []
    real = serve_bench._Process
    monkeypatch.setattr(serve_bench, "_Process",
                        lambda command, marker: commands.append(command) or real(command, marker))
    args = ["bench", "serve", "-m", str(FIXTURES / "llama3-v5"), "-c", "1", "-n", "1", "-p", "8", "-g", "2"]
    assert main([*args, "--kv-bits", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kv_bits"] == 16 and result["engines"]["orchard"][0]["failed"] == 0
    (command,) = commands
    assert command[command.index("--kv-bits") + 1] == "16"


def test_sigterm_drains_running_requests(smollm):
    """Last on the SmolLM2 server: SIGTERM with a stream running lets it finish, then exits 0."""
    body = {"model": "smollm2", "stream": True, "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": "Count from 1 to 100."}]}
    lines = []
    with httpx.stream("POST", f"{smollm.base}/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            lines.append(line)
            if len(lines) == 3:
                smollm.process.send_signal(signal.SIGTERM)
    assert lines[-2] == "data: [DONE]" or lines[-1] == "data: [DONE]"
    finish = [json.loads(line[6:])["choices"][0]["finish_reason"] for line in lines
              if line.startswith("data: {")]
    assert finish[-1] in ("length", "stop")
    assert smollm.process.wait(60) == 0


# -- command-line errors: one line, exit 1, before any model is loaded -------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["serve", "--prompt-cache-bytes", "lots"], "'lots' is not a size"),
    (["serve", "--max-concurrency", "0"], "--max-concurrency must be at least 1"),
    (["serve", "--port", "70000"], "--port must be in 0..65535"),
    (["serve", "--model", "/nonexistent/model", "--port", "0"], "/nonexistent/model: no such file or directory"),
    (["bench", "serve", "-p", "10", "--shared-prefix", "20"], "--shared-prefix (20) must be less than"),
    (["bench", "serve", "--url", "http://127.0.0.1:1", "--kv-bits", "16"],
     "--kv-bits is for the server bench serve starts"),
    (["chat", "--api-key", "k"], "--api-key goes with --server"),
    (["chat", "--server", "http://127.0.0.1:1", "--draft", "m"], "--draft loads a model here"),
])
def test_command_line_errors(args, message, capsys):
    from app.main import main

    assert main(args) == 1
    assert message in capsys.readouterr().err


def test_a_taken_port_is_one_line(capsys):
    import socket

    from app.main import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 1
    assert "Address already in use" in capsys.readouterr().err


def test_outputs_of_one_step_reach_the_loop_in_one_wake_up():
    """The scheduler thread hands a step's outputs over with one `call_soon_threadsafe` (a write to
    the loop's wake-up pipe) however many requests they belong to; each request's stay in order."""
    import asyncio

    from app.serve_engine import _Outbox

    loop = asyncio.new_event_loop()
    wake_ups = []
    plain = loop.call_soon_threadsafe
    loop.call_soon_threadsafe = lambda *a: (wake_ups.append(a), plain(*a))[1]
    try:
        outbox, first, second = _Outbox(loop), asyncio.Queue(), asyncio.Queue()

        def step(n):  # one decode step's outputs for two requests, from the scheduler's thread
            for i in range(n):
                outbox.put(first, f"a{i}")
                outbox.put(second, f"b{i}")

        async def received(queue, n):
            return [await queue.get() for _ in range(n)]

        async def both(*waits):
            return list(await asyncio.gather(*waits))

        worker = threading.Thread(target=step, args=(3,))
        worker.start()
        worker.join()  # the loop is not running: everything waits for one hand-out
        got = loop.run_until_complete(both(received(first, 3), received(second, 3)))
        assert got == [["a0", "a1", "a2"], ["b0", "b1", "b2"]] and len(wake_ups) == 1
        step(1)  # after a hand-out, the next output wakes the loop again
        assert loop.run_until_complete(received(second, 1)) == ["b0"] and len(wake_ups) == 2
    finally:
        loop.close()
