"""`orchard chat` driven by Textual's Pilot.

The engine is faked only at its boundary (test_chat_session's byte-level FakeModel/FakeTokenizer):
the app, its MLX-thread bridge, the ChatSession and stream_generate all run their real code.
Conditions are polled (`wait_for`) rather than trusted to a single pause.
"""

from __future__ import annotations

import asyncio
import functools

import pytest
from test_chat_session import FakeModel, FakeTokenizer

from app.chat.app import ChatApp
from app.chat.screens import HelpScreen, SettingsScreen
from app.chat.widgets import MessageView, PromptArea, StatusBar
from app.storage import SCHEMA_VERSION, Store
from mlxmodels.errors import OrchardError

SIZE = (100, 32)
CODE_ANSWER = "Here is the code:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nCall `add(1, 2)`."


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def fake_loader(model: FakeModel | None = None, fail: str | None = None):
    made = []

    def load(reference, progress):
        progress("loading the fake model…")
        load.references.append(reference)
        if fail and (reference or "").startswith(fail.split(":")[0]):
            raise OrchardError(fail)
        made.append(model or FakeModel())
        return made[-1], FakeTokenizer()

    load.made = made
    load.references = []
    return load


def make_app(tmp_path, **kwargs) -> ChatApp:
    loader = kwargs.pop("loader", None) or fake_loader(kwargs.pop("fake", None))
    return ChatApp(loader=loader, store=Store(), export_dir=tmp_path, **kwargs)


def async_test(fn):
    """Run an async test in a fresh event loop (no pytest-asyncio needed)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return run


async def wait_for(pilot, condition, timeout=10.0):
    """Poll `condition()` while letting the app run; fail with a clear message on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.02)


async def ready(pilot):
    await wait_for(pilot, lambda: pilot.app.session is not None)


async def send(pilot, text: str):
    app = pilot.app
    prompt = app.screen.query_one(PromptArea)
    prompt.focus()
    prompt.text = text
    before = app.turns_finished
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.turns_finished > before)
    await pilot.pause()


def views(app) -> list[MessageView]:
    return list(app.screen.query(MessageView))


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


@async_test
async def test_send_streams_an_answer_and_shows_stats(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello there")
        shown = views(app)
        assert [v.role for v in shown] == ["user", "assistant"]
        assert shown[1].content == "You said: hello there"
        assert "You said: hello there" in shown[1].markdown.source
        status = app.screen.query_one(StatusBar)
        assert status.stats.generation_tokens == len("You said: hello there")
        assert "tok/s" in str(status.render()) and "fake-model" in str(status.render())
        assert app.screen.query_one(PromptArea).text == ""


@async_test
async def test_escape_stops_and_keeps_the_partial_answer(tmp_path):
    model = FakeModel(reply=lambda m: "word " * 400, delay=0.01)
    app = make_app(tmp_path, fake=model)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        prompt = app.screen.query_one(PromptArea)
        prompt.text = "talk a lot"
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(views(app)) == 2 and app.session.messages[-1]["role"] == "user"
                       and app.generating)
        await asyncio.sleep(0.3)  # let some tokens arrive
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.generating)
        answer = views(app)[-1]
        assert answer.stopped and answer.has_class("stopped")
        assert 0 < len(answer.content) < len("word " * 400)
        assert app.session.messages[-1] == {"role": "assistant", "content": answer.content, "stopped": True}
        assert "stopped" in str(app.screen.query_one(StatusBar).render())

        # Esc also works while a long prompt is still being read (between prefill chunks).
        model.delay = 0.2
        before = app.turns_finished
        prompt.text = "y" * 1500
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.generating)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.turns_finished > before)
        assert app.session.last_turn.stopped and app.session.last_turn.new_tokens < 1500
        assert views(app)[-1].role == "user"  # no empty answer
        assert "stopped before the answer began" in str(app.screen.query_one(StatusBar).render())


@async_test
async def test_second_turn_prefills_only_new_tokens(tmp_path):
    model = FakeModel()
    app = make_app(tmp_path, fake=model)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "first")
        cached = app.session.context_used
        model.fed.clear()
        await send(pilot, "second")
        stats = app.screen.query_one(StatusBar).stats
        assert stats.cached_tokens == cached
        assert stats.prompt_tokens == len("\x01second\x03\x02")
        assert model.fed[:2] == [stats.prompt_tokens - 1, 1]  # the engine was asked for the new tokens only


@async_test
async def test_regenerate_and_edit_last_prompt(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "one")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not app.generating and len(views(app)) == 2
                       and views(app)[-1].content == "You said: one")
        assert app.session.last_turn.new_tokens == 1  # rewound to the end of the prompt
        await pilot.press("ctrl+l")
        prompt = app.screen.query_one(PromptArea)
        assert prompt.text == "one" and app.editing
        prompt.text = "uno"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not app.generating and views(app)[-1].content == "You said: uno")
        assert [v.content for v in views(app)] == ["uno", "You said: uno"]


@async_test
async def test_context_overflow_drops_oldest_turn_and_says_so(tmp_path):
    app = make_app(tmp_path, fake=FakeModel(context_length=100))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.session.params.max_tokens = 30
        app.session.answer_reserve = 30
        for word in ("alpha", "bravo", "charlie"):
            await send(pilot, word)
        assert not any("context is full" in n for n in notifications(app))
        await send(pilot, "delta")
        assert any("context is full" in n.lower() for n in notifications(app))
        assert app.session.dropped >= 2
        assert views(app)[-1].content == "You said: delta"
        # Still shown to the user, only left out of the prompt.
        assert views(app)[0].content == "alpha"


@async_test
async def test_errors_are_notifications_not_crashes(tmp_path):
    app = make_app(tmp_path, model="fake-model", loader=fake_loader(fail="fake-model: no such file or directory"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: any("failed to load" in n for n in notifications(app)))
        assert "no such file" in str(app.screen.query_one(StatusBar).render())
        assert app.session is None
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "boom")
        assert any("generation failed: RuntimeError: the fake model exploded" in n for n in notifications(app))
        assert [v.role for v in views(app)] == ["user"]  # no empty answer left behind
        await send(pilot, "better")
        # The unanswered prompt is replaced, in the view as in the session.
        assert [v.content for v in views(app)] == ["better", "You said: better"]
        assert [m["content"] for m in app.session.messages] == ["better", "You said: better"]


@async_test
async def test_settings_modal_validates_and_applies(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
        modal = app.screen
        modal.query_one("#top_p").value = "1.5"
        await pilot.click("#save")
        await wait_for(pilot, lambda: "top-p must be in (0, 1], got 1.5" in str(modal.query_one("#error").render()))
        assert isinstance(app.screen, SettingsScreen)
        modal.query_one("#top_p").value = "0.9"
        modal.query_one("#max_tokens").value = "ten"
        await pilot.press("ctrl+s")  # the modal's save binding (a second click would be a double click)
        await wait_for(pilot, lambda: "Max tokens: 'ten' is not a whole number" in str(modal.query_one("#error").render()))
        modal.query_one("#max_tokens").value = "7"
        modal.query_one("#seed").value = "42"
        modal.query_one("#system").text = "Answer in French."
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert app.session.params.max_tokens == 7 and app.session.params.seed == 42
        assert app.session.system_prompt == "Answer in French."
        await send(pilot, "hello")
        assert views(app)[-1].content == "You sai"  # max tokens (7) honoured
        assert app.store.load(app.conversation.id).params["max_tokens"] == 7


@async_test
async def test_conversations_persist_across_restarts(tmp_path, data_dir):
    app = make_app(tmp_path, system_prompt="be nice")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "remember me")
        first_id = app.conversation.id
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: not views(app))
        await send(pilot, "another chat")
    assert (data_dir / "conversations.sqlite3").is_file()

    loader = fake_loader()
    app = make_app(tmp_path, loader=loader)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        titles = [c.title for c in app.store.list()]
        assert titles == ["another chat", "remember me"]
        await pilot.press("ctrl+b")  # to the conversation list; the newest is highlighted
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.conversation.id == first_id and len(views(app)) == 2
                       and app.session is not None)
        assert [v.content for v in views(app)] == ["remember me", "You said: remember me"]
        assert app.session.system_prompt == "be nice"
        # A reopened conversation continues with its history (prefilled once, then reused).
        await send(pilot, "and now?")
        assert app.session.last_turn.reused_tokens == 0
        assert views(app)[-1].content == "You said: and now?"
        # Rename and delete from the sidebar's list.
        listing = app.screen.query_one("ConversationList")
        listing.focus()
        listing.index = 0
        await pilot.press("r")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RenameScreen")
        app.screen.query_one("#title").value = "Renamed"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "Renamed" in [c.title for c in app.store.list()])
        listing.focus()
        listing.index = 1
        await pilot.press("d")
        await wait_for(pilot, lambda: len(app.store.list()) == 1)


@async_test
async def test_model_picker_loads_in_the_background_and_keeps_the_old_model_on_failure(tmp_path):
    loader = fake_loader(fail="broken: no such file or directory")
    app = make_app(tmp_path, loader=loader)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        old_session = app.session
        await pilot.press("f2")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ModelPickerScreen")
        app.screen.query_one("#reference").value = "other-model"
        app.screen.query_one("#reference").focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: loader.references[-1:] == ["other-model"] and app.session is not old_session)
        # The conversation carries over to the new model (its cache is rebuilt on the next turn).
        assert [m["content"] for m in app.session.messages] == ["hi", "You said: hi"]
        await pilot.press("f2")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ModelPickerScreen")
        app.screen.query_one("#reference").value = "broken"
        app.screen.query_one("#reference").focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("failed to load: broken" in n for n in notifications(app)))
        await send(pilot, "still there?")
        assert views(app)[-1].content == "You said: still there?"


@async_test
async def test_opening_a_conversation_whose_model_fails_keeps_it_consistent(tmp_path):
    from app.storage import Conversation

    store = Store()
    saved = store.save(Conversation(title="old one", model="broken", messages=[
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "You said: a"}]))
    store.close()
    app = make_app(tmp_path, loader=fake_loader(fail="broken: no such file or directory"))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+b", "enter")
        await wait_for(pilot, lambda: any("failed to load: broken" in n for n in notifications(app)))
        await wait_for(pilot, lambda: not app.loading and app.session.messages[:1] == [{"role": "user", "content": "a"}])
        await send(pilot, "b")  # answered by the model already loaded, in the conversation on screen
        assert [v.content for v in views(app)] == ["a", "You said: a", "b", "You said: b"]
    reloaded = Store().load(saved.id)
    assert [m["content"] for m in reloaded.messages] == ["a", "You said: a", "b", "You said: b"]
    assert len(Store().list()) == 1


def test_store_schema_version_and_newer_file_refused(tmp_path):
    store = Store(tmp_path / "c.sqlite3")
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store.db.commit()
    store.close()
    with pytest.raises(OrchardError, match=r"c\.sqlite3: schema version 2 is newer"):
        Store(tmp_path / "c.sqlite3")
    (tmp_path / "junk.sqlite3").write_bytes(b"not a database at all" * 100)
    with pytest.raises(OrchardError, match="junk.sqlite3: cannot open the conversations database"):
        Store(tmp_path / "junk.sqlite3")


@async_test
async def test_export_writes_markdown(tmp_path):
    app = make_app(tmp_path, system_prompt="be brief")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        await pilot.press("f4")
        await wait_for(pilot, lambda: any(n.startswith("Exported to") for n in notifications(app)))
    path = tmp_path / f"orchard-chat-{app.conversation.id}-hi.md"
    assert path.read_text() == (
        "# hi\n\n## System\n\nbe brief\n\n## You\n\nhi\n\n## Assistant\n\nYou said: hi\n"
    )
    assert not list(tmp_path.glob(".*.tmp"))


@async_test
async def test_copy_puts_the_right_text_on_the_clipboard(tmp_path):
    model = FakeModel(reply=lambda m: CODE_ANSWER if "code" in m else "plain")
    app = make_app(tmp_path, fake=model)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "some code please")
        await send(pilot, "thanks")
        await pilot.press("f3")
        assert app.clipboard == "plain"
        code_answer = views(app)[1]
        code_answer.focus()
        await pilot.press("c")
        assert app.clipboard == CODE_ANSWER
        await pilot.press("k")
        assert app.clipboard == "def add(a, b):\n    return a + b\n"
        views(app)[0].focus()
        await pilot.press("c")
        assert app.clipboard == "some code please"


@async_test
async def test_help_lists_every_binding(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = str(app.screen.query_one("VerticalScroll Static").render())
        for label in ("Esc", "Ctrl+N", "Ctrl+S", "F2", "Ctrl+R", "Ctrl+L", "F3", "F4", "Ctrl+B", "F1", "Ctrl+Q",
                      "Shift+Enter", "Ctrl+P"):
            assert label in text, label
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))


def test_real_default_model_end_to_end(tmp_path, default_model_dir, monkeypatch):
    """The real engine on its real thread: a streamed answer and non-zero tokens/s in the status bar."""
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path / "data"))

    async def run():
        app = ChatApp(model=str(default_model_dir), store=Store(), export_dir=tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.session is not None, timeout=120)
            app.session.params.temperature = 0.0
            app.session.params.max_tokens = 24
            await send(pilot, "What is the capital of France?")
            stats = app.screen.query_one(StatusBar).stats
            assert stats.generation_tokens > 0 and stats.generation_tps > 0
            assert "Paris" in views(app)[-1].content
            assert "tok/s" in str(app.screen.query_one(StatusBar).render())

    asyncio.run(run())


# -- snapshots: fixed size, no cursor blink, timings blanked -----------------------------------


@pytest.fixture
def frozen(monkeypatch):
    """Blank what changes from run to run (timings; peak memory, which counts whatever else the
    process holds, e.g. the real model another test loaded) so the SVGs are stable."""
    import app.chat.widgets as widgets

    monkeypatch.setattr(widgets, "format_seconds", lambda v: "-.-- s")
    monkeypatch.setattr(widgets, "format_rate", lambda v: "--.- tok/s")
    monkeypatch.setattr(widgets, "format_memory", lambda v: "-.-- GB")
    monkeypatch.setattr("app.chat.screens.model_choices", lambda: [("", "Default model")])


def snapshot_app(tmp_path, model=None):
    app = make_app(tmp_path, fake=model)
    app.animation_level = "none"
    return app


async def _settle(pilot):
    await ready(pilot)
    pilot.app.screen.query_one(PromptArea).cursor_blink = False
    await pilot.pause()


def test_snapshot_main_screen(snap_compare, tmp_path, frozen):
    app = snapshot_app(tmp_path)
    assert snap_compare(app, terminal_size=SIZE, run_before=_settle)


def test_snapshot_answer_with_code_block(snap_compare, tmp_path, frozen):
    app = snapshot_app(tmp_path, FakeModel(reply=lambda m: CODE_ANSWER))

    async def before(pilot):
        await _settle(pilot)
        await send(pilot, "write add() in python")
        pilot.app.set_focus(None)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=before)


def test_snapshot_settings_modal(snap_compare, tmp_path, frozen):
    app = snapshot_app(tmp_path)

    async def before(pilot):
        await _settle(pilot)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, SettingsScreen))
        pilot.app.screen.query_one("#system").cursor_blink = False
        for widget in pilot.app.screen.query("Input"):
            widget.cursor_blink = False
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=before)


def test_snapshot_help_screen(snap_compare, tmp_path, frozen):
    app = snapshot_app(tmp_path)

    async def before(pilot):
        await _settle(pilot)
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, HelpScreen))

    assert snap_compare(app, terminal_size=SIZE, run_before=before)


def test_cli_options_reach_the_app(monkeypatch):
    from app.main import build_parser

    args = build_parser().parse_args(["chat", "--model", "m", "--system", "be brief"])
    assert (args.model, args.system) == ("m", "be brief")
    captured = {}

    def fake_run(self):
        captured.update(model=self.start_model, system=self.start_system)

    monkeypatch.setattr(ChatApp, "run", fake_run)
    from app.main import main

    assert main(["--debug"]) == 0  # plain `orchard` (top-level options only) opens the chat
    assert captured == {"model": None, "system": ""}
    assert main(["chat", "-m", "x", "--system", "s"]) == 0
    assert captured == {"model": "x", "system": "s"}
