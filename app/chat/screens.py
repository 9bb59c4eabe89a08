"""Modal screens: conversation settings, model picker, rename, and help."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from mlxmodels.chat_session import ChatParams
from mlxmodels.errors import OrchardError


class SettingsScreen(ModalScreen):
    """System prompt and sampling parameters of the current conversation; dismisses with
    (system_prompt, ChatParams) when valid, None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="settings.cancel"),
                Binding("ctrl+s", "save", "Save", id="settings.save")]

    FIELDS = [("temperature", "Temperature", float), ("top_p", "Top-p", float), ("top_k", "Top-k", int),
              ("max_tokens", "Max tokens", int), ("seed", "Seed (empty: random)", int),
              ("speculative", "Speculative decoding", str),  # off, lookup, mtp or draft
              ("num_draft", "Max guesses (0: auto)", int)]

    def __init__(self, system_prompt: str, params: ChatParams):
        super().__init__()
        self.system_prompt = system_prompt
        self.params = params

    def compose(self):
        with Vertical(id="dialog", classes="dialog"):
            yield Label("Conversation settings", classes="dialog-title")
            yield Label("System prompt")
            yield TextArea(self.system_prompt, id="system", soft_wrap=True, tab_behavior="focus")
            for name, label, _ in self.FIELDS:
                value = getattr(self.params, name)
                with Horizontal(classes="field", id=f"{name}-row"):
                    yield Label(label)
                    yield Input("" if value is None else str(value), id=name, compact=True)
            yield Static("", id="error")
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_save() if event.button.id == "save" else self.action_cancel()

    def on_input_submitted(self) -> None:
        self.action_save()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_save(self) -> None:
        try:
            params = self.read()
        except OrchardError as e:
            self.query_one("#error", Static).update(Text(str(e)))
            return
        self.dismiss((self.query_one("#system", TextArea).text.strip(), params))

    def read(self) -> ChatParams:
        values = {}
        for name, label, kind in self.FIELDS:
            raw = self.query_one(f"#{name}", Input).value.strip()
            if name == "seed" and not raw:
                values[name] = None
                continue
            try:
                values[name] = kind(raw)
            except ValueError:
                noun = "a whole number" if kind is int else "a number"
                raise OrchardError(f"{label.split(' (')[0]}: {raw!r} is not {noun}") from None
        return ChatParams(**values).validate()


class ModelPickerScreen(ModalScreen):
    """Pick the default model, a cached or catalog model, or type any path / Hugging Face id."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="model_picker.cancel")]

    def __init__(self, current: str | None):
        super().__init__()
        self.current = current

    def compose(self):
        with Vertical(classes="dialog"):
            yield Label("Choose a model", classes="dialog-title")
            yield OptionList(*[Option(label, id=ref) for ref, label in model_choices()], id="models")
            yield Label("…or a path / Hugging Face repo id (Enter to load):")
            yield Input(self.current or "", placeholder="~/models/my-model  or  org/name", id="reference")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id or "")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


def model_choices() -> list[tuple[str, str]]:
    """(reference, label): the default, converted models in Orchard's cache, then the catalog."""
    from mlxmodels.paths import cache_dir
    from mlxmodels.resolve import catalog

    choices = [("", "Default model (SmolLM2-135M-Instruct, or config.toml's default_model)")]
    models = cache_dir() / "models"
    if models.is_dir():
        for d in sorted(models.iterdir()):
            if (d / "config.json").is_file():
                choices.append((str(d), f"{d.name}  (local: {_short(d)})"))
    for name, entry in catalog().items():
        choices.append((name, f"{name}  ({entry.get('description', '')})"))
    return choices


def _short(path: Path) -> str:
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


class RenameScreen(ModalScreen):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="rename.cancel")]

    def __init__(self, title: str):
        super().__init__()
        self.title_text = title

    def compose(self):
        with Vertical(classes="dialog"):
            yield Label("Rename conversation", classes="dialog-title")
            yield Input(self.title_text, id="title")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen):
    """Every key binding of the app, the chat screen and its widgets, read from their definitions."""

    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close", id="help.close")]

    def __init__(self, sections: list[tuple[str, list]]):
        super().__init__()
        self.sections = sections

    def compose(self):
        text = Text()
        for title, bindings in self.sections:
            text.append(f"{title}\n", style="bold underline")
            for binding in bindings:
                keys = ", ".join(_key_label(k) for k in binding.key.split(","))
                text.append(f"  {keys:<22}", style="bold")
                text.append(f"{binding.description or binding.action}\n")
            text.append("\n")
        text.append("Ctrl+P opens the command palette: every action above, and the theme (light/dark).",
                    style="italic")
        with Vertical(classes="dialog", id="help"):
            yield Label("Keys", classes="dialog-title")
            with VerticalScroll():
                yield Static(text)

    async def action_dismiss(self, result=None) -> None:
        self.dismiss()


def _key_label(key: str) -> str:
    names = {"escape": "Esc", "question_mark": "?", "delete": "Del", "enter": "Enter"}
    if key in names:
        return names[key]
    return "+".join(part.capitalize() if len(part) > 1 else part.upper() for part in key.split("+"))
