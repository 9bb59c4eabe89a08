"""A conversation as a Markdown document, and writing it to a file safely."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from app.storage import Conversation


def to_markdown(conv: Conversation, model_name: str = "") -> str:
    lines = [f"# {conv.title}", ""]
    if model_name:
        lines += [f"Model: `{model_name}`", ""]
    if conv.system_prompt:
        lines += ["## System", "", conv.system_prompt, ""]
    for m in conv.messages:
        heading = "You" if m["role"] == "user" else "Assistant"
        lines += [f"## {heading}", "", m["content"]]
        if m.get("stopped"):
            lines += ["", "*(stopped)*"]
        lines.append("")
    return "\n".join(lines)


def export_path(directory: Path, conv: Conversation) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", conv.title.lower()).strip("-")[:40] or "chat"
    return Path(directory) / f"orchard-chat-{conv.id or 'new'}-{slug}.md"


def write_markdown(path: Path, text: str) -> Path:
    """Write via a temp file in the same directory and rename, so no half-written file remains."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
