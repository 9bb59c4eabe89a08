"""`orchard chat --server URL`: the chat UI (driven by Textual's Pilot) as a client of a real
`orchard serve` on 127.0.0.1. Its answers must be the server's own (checked with the `openai` client)
and its status bar must show the live stats a local chat shows."""

from __future__ import annotations

import asyncio

import pytest
from conftest import FIXTURES
from test_chat_ui import SIZE, send, views, wait_for
from test_serve import Server

from app.chat.app import ChatApp
from app.chat.remote import remote_loader
from app.chat.widgets import StatusBar
from app.storage import Store
from mlxmodels.errors import OrchardError


@pytest.fixture(scope="module")
def server():
    server = Server(["--model", str(FIXTURES / "llama3-v5"), "--api-key", "k", "--quiet"])
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path / "data"))


def test_chat_ui_answers_through_the_server(server, tmp_path):
    def expected(messages):
        reply = server.client("k").chat.completions.create(model="llama3-v5", messages=messages, max_tokens=6,
                                                          temperature=0)
        return reply.choices[0].message.content

    async def run():
        app = ChatApp(loader=remote_loader(server.root, "k"), store=Store(), export_dir=tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.session is not None, timeout=30)
            app.session.params.temperature = 0.0
            app.session.params.max_tokens = 6
            await send(pilot, "hello")
            first = views(app)[-1].content
            assert first == expected([{"role": "user", "content": "hello"}])
            await send(pilot, "again")
            assert views(app)[-1].content == expected([{"role": "user", "content": "hello"},
                                                       {"role": "assistant", "content": first},
                                                       {"role": "user", "content": "again"}])
            status = app.screen.query_one(StatusBar)
            assert status.stats.generation_tokens == 6 and status.stats.ttft > 0
            assert status.stats.cached_tokens > 0  # the second turn reused the first one's cache
            text = str(status.render())
            assert "llama3-v5" in text and "server 127.0.0.1" in text and "tok/s" in text

    asyncio.run(run())


def test_unreachable_or_wrong_server_is_one_line(server):
    with pytest.raises(OrchardError, match="cannot reach the server"):
        remote_loader("http://127.0.0.1:9", timeout=2)(None, lambda m: None)
    with pytest.raises(OrchardError, match="answered 401"):
        remote_loader(server.root, "wrong")(None, lambda m: None)
    with pytest.raises(OrchardError, match="does not serve 'other'"):
        remote_loader(server.root, "k")("other", lambda m: None)
    with pytest.raises(OrchardError, match="http://"):
        remote_loader("localhost:8080")
