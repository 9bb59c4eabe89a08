"""What the chat screen is made of: messages, the conversation log, the prompt, the status bar, the
sidebar of saved conversations."""

from __future__ import annotations

import re

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Label, ListItem, ListView, Markdown, Static, TextArea

_FENCE = re.compile(r"^(`{3,}|~{3,})[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)


def code_blocks(markdown: str) -> list[str]:
    """The contents of the fenced code blocks in `markdown`, in order."""
    return [m.group(2) for m in _FENCE.finditer(markdown)]


def readable_tool_calls(text: str) -> str:
    """An answer with the tool calls a model wrote in its own format (Hermes <tool_call>, Llama 3
    JSON, Mistral [TOOL_CALLS], harmony) shown as a heading and pretty-printed arguments; any other
    answer as it is."""
    import json

    from mlxmodels.tools import parse_reply
    from mlxmodels.tools.formats import FORMATS

    for fmt in (cls() for cls in FORMATS.values()):
        if fmt.find_start(text, True) is None:
            continue
        reply = parse_reply(fmt, text)
        if not reply.tool_calls:
            continue
        parts = [reply.content.rstrip()] if reply.content.strip() else []
        for call in reply.tool_calls:
            arguments = call.arguments_object()
            shown = call.arguments if arguments is None else json.dumps(arguments, indent=2, ensure_ascii=False)
            parts.append(f"**Tool call** `{call.name}`\n\n```json\n{shown}\n```")
        return "\n\n".join(parts)
    return text


class MessageView(Vertical, can_focus=True):
    """One message. Assistant text is Markdown (code blocks highlighted); user text is shown as typed."""

    BINDINGS = [
        Binding("c", "copy_message", "Copy message", id="message.copy"),
        Binding("k", "copy_code", "Copy code block", id="message.copy_code"),
    ]

    def __init__(self, role: str, content: str = "", stopped: bool = False):
        super().__init__(classes=role)
        self.role = role
        self.content = content
        self.stopped = stopped
        self.set_class(stopped, "stopped")

    def compose(self):
        yield Label("You" if self.role == "user" else "Assistant", classes="role")
        if self.role == "assistant":
            yield Markdown(readable_tool_calls(self.content))
        else:
            yield Static(Text(self.content), classes="body")
        yield Label("stopped", classes="stop-mark")

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def mark_stopped(self, stopped: bool = True) -> None:
        self.stopped = stopped
        self.set_class(stopped, "stopped")

    def action_copy_message(self) -> None:
        self.app.copy_to_clipboard(self.content)
        self.notify("Message copied")

    def action_copy_code(self) -> None:
        blocks = code_blocks(self.content)
        if not blocks:
            self.notify("This message has no code block", severity="warning")
            return
        self.app.copy_to_clipboard(blocks[-1])
        self.notify("Code block copied")


class ChatLog(VerticalScroll):
    """The conversation. Anchored to the bottom while streaming unless the user scrolls up."""

    def on_mount(self) -> None:
        self.anchor()


class PromptArea(TextArea):
    """Multi-line prompt: Enter sends, Shift+Enter or Ctrl+J starts a new line."""

    class Submitted(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    async def _on_key(self, event) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self.text))
            return
        if event.key in ("shift+enter", "ctrl+j"):
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)


def format_seconds(value: float) -> str:
    return f"{value:.2f} s"


def format_rate(value: float) -> str:
    return f"{value:.1f} tok/s"


def format_memory(gigabytes: float) -> str:
    return f"{gigabytes:.2f} GB"


class StatusBar(Static):
    """Model, backend, context use, the last answer's performance, and what is happening now."""

    def __init__(self, **kwargs):
        super().__init__("", **kwargs)
        self.model_name = ""
        self.backend = ""
        self.context = (0, 0)
        self.stats = None
        self.activity = ""
        self.error = False

    def set(self, **fields) -> None:
        for key, value in fields.items():
            setattr(self, key, value)
        self.refresh_text()

    def refresh_text(self) -> None:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(self.model_name or "no model", style="bold")
        if self.backend:
            text.append(f" · {self.backend}")
        used, total = self.context
        if total:
            text.append(f" · ctx {used}/{total}")
        s = self.stats
        if s is not None:
            text.append(
                f" · TTFT {format_seconds(s.ttft)} · {format_rate(s.generation_tps)}"
                f" · {s.generation_tokens} tokens · {format_memory(s.peak_memory_gb)}"
            )
            if s.draft_tokens:  # speculative decoding: what the guesses bought
                text.append(f" · {s.acceptance_rate:.0%} guessed · {s.tokens_per_pass:.1f} tok/pass")
        if self.activity:
            text.append(f" · {self.activity}", style="bold red" if self.error else "italic")
        self.update(text)


class ConversationItem(ListItem):
    def __init__(self, conversation_id: int, title: str, current: bool):
        super().__init__(Label(title), classes="current" if current else "")
        self.conversation_id = conversation_id


class ConversationList(ListView):
    """Saved conversations, newest first. Enter opens, r renames, d deletes."""

    BINDINGS = [
        Binding("r", "rename", "Rename", id="conversations.rename"),
        Binding("d,delete", "delete", "Delete", id="conversations.delete"),
    ]

    class Action(Message):
        def __init__(self, action: str, conversation_id: int):
            super().__init__()
            self.action = action
            self.conversation_id = conversation_id

    def _selected_id(self) -> int | None:
        item = self.highlighted_child
        return item.conversation_id if isinstance(item, ConversationItem) else None

    def action_rename(self) -> None:
        if (cid := self._selected_id()) is not None:
            self.post_message(self.Action("rename", cid))

    def action_delete(self) -> None:
        if (cid := self._selected_id()) is not None:
            self.post_message(self.Action("delete", cid))


class Sidebar(Vertical):
    def compose(self):
        yield Label("Conversations", classes="title")
        yield ConversationList()
