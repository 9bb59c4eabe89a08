"""The chat app: one screen (conversation, prompt, status bar, sidebar) and the modals around it.

State lives here: the saved conversation being shown, the engine-side `ChatSession` for it, and the
bridge to the MLX thread. Every MLX call goes through `self.bridge`; the event loop only renders.
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from pathlib import Path
from typing import Callable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Markdown

from app.chat.bridge import EngineBridge
from app.chat.export import export_path, to_markdown, write_markdown
from app.chat.screens import HelpScreen, ModelPickerScreen, RenameScreen, SettingsScreen
from app.chat.widgets import (
    ChatLog,
    ConversationItem,
    ConversationList,
    MessageView,
    PromptArea,
    Sidebar,
    StatusBar,
    format_rate,
    readable_tool_calls,
)
from app.storage import Conversation, Store, title_from
from mlxmodels.chat_session import ChatParams, ChatSession
from mlxmodels.errors import OrchardError

BACKENDS = {"metal": "Metal", "cuda": "CUDA", "cpu": "CPU"}
# Keys the prompt handles itself; listed in the help screen beside the real bindings.
PROMPT_KEYS = [Binding("enter", "send", "Send the message"),
               Binding("shift+enter,ctrl+j", "newline", "New line in the prompt")]


def stylesheet() -> Path:
    return Path(str(resources.files("orchard_assets").joinpath("chat.tcss")))


class ChatScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.stop", "Stop", id="chat.stop"),
        Binding("ctrl+n", "app.new_chat", "New chat", id="chat.new"),
        Binding("ctrl+s", "app.settings", "Settings", id="chat.settings"),
        Binding("f2", "app.pick_model", "Model", id="chat.model"),
        Binding("ctrl+r", "app.regenerate", "Regenerate", id="chat.regenerate"),
        Binding("ctrl+l", "app.edit_last", "Edit last prompt", id="chat.edit_last"),
        Binding("f3", "app.copy_last", "Copy answer", id="chat.copy_last"),
        Binding("f4", "app.export", "Export", id="chat.export"),
        Binding("ctrl+b", "app.toggle_sidebar", "Conversations", id="chat.sidebar"),
    ]

    def compose(self):
        with Horizontal(id="body"):
            yield Sidebar(id="sidebar")
            with Vertical(id="main"):
                yield ChatLog(id="log")
                yield PromptArea(id="prompt", soft_wrap=True, tab_behavior="focus", show_line_numbers=False,
                                 placeholder="Message (Enter sends, Shift+Enter / Ctrl+J new line)")
        yield StatusBar(id="status")
        yield Footer()


Loader = Callable[[str | None, Callable[[str], None]], tuple]


def default_loader(cpu_weights: str = "auto") -> Loader:
    def load(reference, progress):
        import mlxmodels

        model, tokenizer = mlxmodels.load(reference or None, progress=progress, cpu_weights=cpu_weights)
        # Weights to materialise and CPU kernels to compile: pay it here, under the loading
        # indicator, not in the first answer's TTFT.
        progress("preparing the weights…")
        mlxmodels.warm_up(model)
        return model, tokenizer

    return load


class ChatApp(App):
    CSS_PATH = stylesheet()
    TITLE = "Orchard"
    BINDINGS = [Binding("f1,question_mark", "help", "Help", id="help")]

    def __init__(self, model: str | None = None, system_prompt: str | None = None, loader: Loader | None = None,
                 store: Store | None = None, export_dir: Path | None = None, draft: str | None = None,
                 cpu_weights: str = "auto"):
        super().__init__()
        self.draft_ref = draft  # a draft model for speculative decoding, loaded beside each model
        self.draft = None
        self.cpu_weights = cpu_weights  # the draft's CPU weights policy (the loader has the model's)
        self.loader = loader or default_loader()
        self.store = store or Store()
        self.export_dir = Path(export_dir) if export_dir else Path.cwd()
        self.start_model = model
        self.start_system = system_prompt or ""
        self.model_ref: str | None = None  # what the loaded model was asked for
        self.model = self.tokenizer = None
        self.session: ChatSession | None = None
        self.conversation = Conversation(model=model, system_prompt=self.start_system)
        self.bridge: EngineBridge | None = None
        self.generating = False
        self.loading = False
        self._loads = 0
        self.editing = False
        self.turns_finished = 0  # answers completed, stopped or failed (what tests and scripts wait on)

    # -- start and stop -----------------------------------------------------------------------

    async def on_mount(self) -> None:
        self.bridge = EngineBridge()
        await self.push_screen(ChatScreen())
        self.refresh_sidebar()
        self.screen.query_one(PromptArea).focus()
        self.load_model(self.start_model)

    def on_unmount(self) -> None:
        if self.bridge is not None:
            self.bridge.shutdown()
        self.store.close()

    # -- widgets ------------------------------------------------------------------------------

    @property
    def status(self) -> StatusBar:
        return self.screen.query_one(StatusBar)

    @property
    def log_view(self) -> ChatLog:
        return self.screen.query_one(ChatLog)

    def set_activity(self, text: str, error: bool = False) -> None:
        self.status.set(activity=text, error=error)

    def show_error(self, message: str) -> None:
        self.notify(message, title="Error", severity="error", timeout=8)
        self.set_activity(message, error=True)

    def refresh_sidebar(self) -> None:
        listing = self.screen.query_one(ConversationList)
        listing.clear()
        saved = self.store.list()
        for conv in saved:
            listing.append(ConversationItem(conv.id, conv.title, conv.id == self.conversation.id))
        ids = [c.id for c in saved]
        # Highlight the open conversation (or the newest), so Enter works as soon as the list has focus.
        listing.index = ids.index(self.conversation.id) if self.conversation.id in ids else (0 if ids else None)

    async def render_conversation(self) -> None:
        log = self.log_view
        await log.remove_children()
        await log.mount_all(
            [MessageView(m["role"], m["content"], bool(m.get("stopped"))) for m in self.conversation.messages]
        )
        log.scroll_end(animate=False)

    # -- the model ----------------------------------------------------------------------------

    @work(exclusive=True, group="load")
    async def load_model(self, reference: str | None) -> None:
        log = self.log_view
        log.loading = True
        self.loading = True
        self._loads += 1
        mine = self._loads
        self.set_activity(f"loading {reference or 'the default model'}…")
        loop = asyncio.get_running_loop()

        def progress(message: str) -> None:  # called on the MLX thread
            loop.call_soon_threadsafe(self.set_activity, message)

        try:
            self.model, self.tokenizer = await self.bridge.call(self.loader, reference, progress)
        except Exception as e:  # OrchardError: bad input; anything else: a bug. Neither may crash the UI.
            detail = str(e) if isinstance(e, OrchardError) else f"{type(e).__name__}: {e}"
            self.show_error(f"model failed to load: {detail}")
            if self.model is not None:
                # Keep going on the model already loaded, with the conversation now on screen.
                self.start_session()
            return
        finally:
            if mine == self._loads:  # (a newer load, which cancelled this one, is still running)
                log.loading = False
                self.loading = False
        self.model_ref = reference
        info = self.model.info
        self.status.set(model_name=Path(info.path).name, backend=BACKENDS.get(info.backend, info.backend))
        await self.load_draft(progress)
        self.start_session()
        self.set_activity("ready")

    async def load_draft(self, progress) -> None:
        """The --draft model, checked against the model just loaded (its tokenizer must be the same);
        a failure is shown and the chat goes on without it."""
        self.draft = None
        if self.draft_ref is None:
            return
        from mlxmodels.proposers import load_draft

        self.set_activity(f"loading the draft model {self.draft_ref}…")
        try:
            self.draft = await self.bridge.call(load_draft, self.draft_ref, self.model, self.tokenizer,
                                                self.cpu_weights, progress)
        except Exception as e:
            detail = str(e) if isinstance(e, OrchardError) else f"{type(e).__name__}: {e}"
            self.show_error(f"draft model failed to load: {detail}")

    def start_session(self) -> None:
        conv = self.conversation
        if not conv.params:
            conv.params = self.model_defaults()
        # A model served elsewhere (`orchard chat --server`) brings its own kind of session.
        session_class = getattr(self.model, "session_class", ChatSession)
        self.session = session_class(
            self.model, self.tokenizer, system_prompt=conv.system_prompt,
            params=ChatParams.from_dict(conv.params), messages=[dict(m) for m in conv.messages], draft=self.draft,
        )
        self.update_context()

    def model_defaults(self) -> dict:
        from mlxmodels.prompt import generation_defaults

        path = Path(self.model.info.path)
        defaults = generation_defaults(path) if path.is_dir() else {}
        params = ChatParams()
        for key in ("temperature", "top_p", "top_k"):
            if key in defaults:
                setattr(params, key, type(getattr(params, key))(defaults[key]))
        return params.to_dict()

    def update_context(self) -> None:
        if self.session is not None:
            self.status.set(context=(self.session.context_used, self.session.context_length))

    # -- turns --------------------------------------------------------------------------------

    async def on_prompt_area_submitted(self, message: PromptArea.Submitted) -> None:
        text = message.text.strip()
        if not text:
            return
        if self.generating:
            self.notify("Still answering: wait, or press Esc to stop", severity="warning")
            return
        if self.session is None or self.loading:
            self.notify("The model is not loaded yet", severity="warning")
            return
        self.screen.query_one(PromptArea).clear()
        log = self.log_view
        if self.editing:
            self.editing = False
            views = list(log.query(MessageView))
            while views and views[-1].role == "assistant":
                await views.pop().remove()
            if views:
                await views.pop().remove()
            kind = "edit"
        else:
            kind = "send"
            if self.session.messages and self.session.messages[-1]["role"] == "user":
                # The last prompt never got an answer (stopped early or failed): the new one replaces it,
                # as the session does.
                views = list(log.query(MessageView))
                if views and views[-1].role == "user":
                    await views[-1].remove()
        await log.mount(MessageView("user", text))
        await self.start_turn(kind, text)

    async def start_turn(self, kind: str, text: str = "") -> None:
        view = MessageView("assistant")
        await self.log_view.mount(view)
        self.log_view.anchor()
        self.generating = True
        self.generate(kind, text, view)

    @work(exclusive=True, group="generate")
    async def generate(self, kind: str, text: str, view: MessageView) -> None:
        session = self.session
        starters = {
            "send": lambda **kw: session.send(text, **kw),
            "regenerate": lambda **kw: session.regenerate(**kw),
            "edit": lambda **kw: session.edit_last(text, **kw),
        }
        markdown = view.markdown
        stream = Markdown.get_stream(markdown)
        pieces: list[str] = []
        error = None
        first = None
        tokens = 0
        shown = 0.0
        self.set_activity("thinking…")
        try:
            async for event in self.bridge.stream(starters[kind]):
                if event.kind == "chunk":
                    if event.chunk.text:
                        pieces.append(event.chunk.text)
                        await stream.write(event.chunk.text)
                    now = time.monotonic()
                    tokens += event.chunk.token is not None
                    first = first or now
                    if now - shown > 0.5:  # live progress, without re-rendering per token
                        shown = now
                        rate = (tokens - 1) / (now - first) if now > first else 0.0
                        self.set_activity(f"answering… {tokens} tokens, {format_rate(rate)}")
                elif event.kind == "prefill":
                    done, total = event.progress
                    self.set_activity(f"reading the prompt… {done}/{total} tokens")
                elif event.kind == "error":
                    error = event.error
        finally:
            await stream.stop()
            self.generating = False
        content = "".join(pieces)
        view.content = content
        await markdown.update(readable_tool_calls(content))  # one full parse, so code blocks render completely
        turn = session.last_turn if error is None else None
        if error is not None:
            if not content:
                await view.remove()
            detail = str(error) if isinstance(error, OrchardError) else f"{type(error).__name__}: {error}"
            self.show_error(f"generation failed: {detail}")
        elif not content and turn.stopped:  # stopped while reading the prompt
            await view.remove()
            self.status.set(activity="stopped before the answer began (Ctrl+R answers it)", error=False)
        else:
            view.mark_stopped(turn.stopped)
            self.status.set(stats=turn.stats, activity="stopped" if turn.stopped else "", error=False)
            if turn.dropped_messages:
                self.notify(
                    f"The context is full: the oldest {turn.dropped_messages} messages no longer reach the "
                    "model (the system prompt is kept)", title="Context full", severity="warning", timeout=8)
        self.update_context()
        self.save()
        self.turns_finished += 1

    def save(self) -> None:
        conv = self.conversation
        if self.session is not None:
            conv.messages = [dict(m) for m in self.session.messages]
        if not conv.messages:
            return
        if conv.title == "New chat":
            conv.title = title_from(next((m["content"] for m in conv.messages if m["role"] == "user"), ""))
        conv.model = self.model_ref
        self.store.save(conv)
        self.refresh_sidebar()

    # -- actions ------------------------------------------------------------------------------

    def action_stop(self) -> None:
        if self.generating:
            self.bridge.stop()
        elif self.editing:
            self.editing = False
            self.screen.query_one(PromptArea).clear()
            self.set_activity("")

    def _idle(self) -> bool:
        if self.generating:
            self.notify("Still answering: wait, or press Esc to stop", severity="warning")
            return False
        if self.session is None or self.loading:
            self.notify("The model is not loaded yet", severity="warning")
            return False
        return True

    async def action_regenerate(self) -> None:
        if not self._idle():
            return
        if not any(m["role"] == "user" for m in self.session.messages):
            self.notify("Nothing to regenerate yet", severity="warning")
            return
        views = list(self.log_view.query(MessageView))
        if views and views[-1].role == "assistant":
            await views[-1].remove()
        await self.start_turn("regenerate")

    def action_edit_last(self) -> None:
        if not self._idle():
            return
        last = next((m for m in reversed(self.session.messages) if m["role"] == "user"), None)
        if last is None:
            self.notify("No prompt to edit yet", severity="warning")
            return
        prompt = self.screen.query_one(PromptArea)
        prompt.text = last["content"]
        prompt.focus()
        self.editing = True
        self.set_activity("editing the last prompt: Enter resends, Esc cancels")

    def action_copy_last(self) -> None:
        messages = self.session.messages if self.session else self.conversation.messages
        last = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
        if last is None:
            self.notify("No answer to copy yet", severity="warning")
            return
        self.copy_to_clipboard(last["content"])
        self.notify("Answer copied to the clipboard")

    def action_export(self) -> None:
        self.save()
        conv = self.conversation
        if not conv.messages:
            self.notify("Nothing to export yet", severity="warning")
            return
        try:
            path = write_markdown(export_path(self.export_dir, conv), to_markdown(conv, self.model_ref or ""))
        except OSError as e:
            self.show_error(f"export failed: {e}")
            return
        self.notify(f"Exported to {path}")

    def action_toggle_sidebar(self) -> None:
        sidebar = self.screen.query_one(Sidebar)
        listing = sidebar.query_one(ConversationList)
        if sidebar.display and not listing.has_focus:
            listing.focus()  # first press: go to the list; second press: hide it
            return
        sidebar.display = not sidebar.display
        if sidebar.display:
            listing.focus()
        else:
            self.screen.query_one(PromptArea).focus()

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        sections = [
            ("Chat", ChatScreen.BINDINGS + PROMPT_KEYS),
            ("Everywhere", self.BINDINGS + [b for b in App.BINDINGS if isinstance(b, Binding) and b.description]
             + [Binding("ctrl+p", "command_palette", "Command palette")]),
            ("A focused message", MessageView.BINDINGS),
            ("The conversation list", [Binding("enter", "open", "Open")] + ConversationList.BINDINGS),
        ]
        self.push_screen(HelpScreen(sections))

    async def action_new_chat(self) -> None:
        if self.generating:
            self.notify("Still answering: wait, or press Esc to stop", severity="warning")
            return
        self.conversation = Conversation(model=self.model_ref, system_prompt=self.start_system)
        self.editing = False
        await self.render_conversation()
        if self.model is not None:
            self.start_session()
        self.status.set(stats=None, activity="new chat")
        self.refresh_sidebar()
        self.screen.query_one(PromptArea).focus()

    def action_settings(self) -> None:
        if self.session is None:
            self.notify("The model is not loaded yet", severity="warning")
            return

        def apply(result) -> None:
            if result is None:
                return
            system, params = result
            self.conversation.system_prompt = system
            self.conversation.params = params.to_dict()
            self.session.system_prompt = system
            self.session.params = params
            if self.conversation.messages or self.conversation.id is not None:
                self.save()
            self.notify("Settings saved")

        self.push_screen(SettingsScreen(self.conversation.system_prompt, self.session.params), apply)

    def action_pick_model(self) -> None:
        if self.generating:
            self.notify("Still answering: wait, or press Esc to stop", severity="warning")
            return

        def chosen(reference) -> None:
            if reference is None:
                return
            self.conversation.model = reference or None
            self.load_model(reference or None)

        self.push_screen(ModelPickerScreen(self.model_ref), chosen)

    # -- the conversation list ----------------------------------------------------------------

    async def on_list_view_selected(self, event: ConversationList.Selected) -> None:
        item = event.item
        if isinstance(item, ConversationItem):
            await self.open_conversation(item.conversation_id)

    async def open_conversation(self, conversation_id: int) -> None:
        if self.generating:
            self.notify("Still answering: wait, or press Esc to stop", severity="warning")
            return
        self.conversation = self.store.load(conversation_id)
        self.editing = False
        await self.render_conversation()
        self.status.set(stats=None, activity="")
        self.refresh_sidebar()
        if self.conversation.model != self.model_ref or self.model is None:
            self.load_model(self.conversation.model)
        else:
            self.start_session()

    async def on_conversation_list_action(self, event: ConversationList.Action) -> None:
        cid = event.conversation_id
        if event.action == "delete":
            self.store.delete(cid)
            if cid == self.conversation.id:
                await self.action_new_chat()
            self.refresh_sidebar()
            self.notify("Conversation deleted")
        elif event.action == "rename":
            current = next((c.title for c in self.store.list() if c.id == cid), "")

            def renamed(title) -> None:
                if title:
                    self.store.rename(cid, title)
                    if cid == self.conversation.id:
                        self.conversation.title = title
                    self.refresh_sidebar()

            self.push_screen(RenameScreen(current), renamed)

    # -- command palette ----------------------------------------------------------------------

    def get_system_commands(self, screen) -> list:
        yield from super().get_system_commands(screen)
        commands = [
            ("New chat", "Start a new conversation", self.action_new_chat),
            ("Settings", "System prompt, temperature, top-p, top-k, max tokens, seed", self.action_settings),
            ("Choose model", "Load another model", self.action_pick_model),
            ("Regenerate", "Answer the last prompt again", self.action_regenerate),
            ("Edit last prompt", "Change the last prompt and resend it", self.action_edit_last),
            ("Copy last answer", "Copy the last answer to the clipboard", self.action_copy_last),
            ("Copy last code block", "Copy the last code block of the last answer", self.copy_last_code),
            ("Export to Markdown", "Write this conversation to a .md file", self.action_export),
            ("Stop", "Stop the answer being generated", self.action_stop),
            ("Conversations", "Go to the conversation list (again: hide it)", self.action_toggle_sidebar),
            ("Keys", "Every key binding", self.action_help),
        ]
        for title, help_text, callback in commands:
            yield SystemCommand(title, help_text, callback)

    def copy_last_code(self) -> None:
        views = [v for v in self.log_view.query(MessageView) if v.role == "assistant"]
        if not views:
            self.notify("No answer yet", severity="warning")
            return
        views[-1].action_copy_code()
