"""Turning a conversation into the prompt text the model was trained on."""

from __future__ import annotations

import json
from pathlib import Path


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "has_chat_template", False))


def format_messages(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The chat template applied to `messages`; a plain transcript if the model has no template.

    The fallback ("System: …\\nUser: …\\nAssistant:") is what base models continue most sensibly.
    """
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    if add_generation_prompt:
        lines.append("Assistant:")
    return "\n".join(lines)


def generation_defaults(model_path: Path) -> dict:
    """Sampling settings the model's authors recommend (generation_config.json), if any."""
    path = Path(model_path) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    keys = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
            "repetition_penalty": "repetition_penalty"}
    defaults = {ours: config[theirs] for theirs, ours in keys.items() if isinstance(config.get(theirs), (int, float))}
    if config.get("do_sample") is False:
        # Greedy, as transformers' generate() reads it, whatever temperature the file also names
        # (the penalty still applies there; top-p/top-k only matter if the user raises the temperature).
        defaults["temperature"] = 0.0
    return defaults
