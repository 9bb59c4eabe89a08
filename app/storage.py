"""Saved conversations: one SQLite file in the user data directory, with a versioned schema.

`ORCHARD_DATA_DIR` overrides the platform's data directory (tests point it at a temp dir). The
schema version lives in SQLite's `user_version`; `MIGRATIONS[i]` upgrades version i to i + 1, so a
newer Orchard opens an older file in place and an older Orchard refuses a newer one by name.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from mlxmodels.errors import OrchardError

MIGRATIONS = [
    """
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        title TEXT NOT NULL,
        model TEXT,
        system_prompt TEXT NOT NULL DEFAULT '',
        params TEXT NOT NULL DEFAULT '{}',
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE messages (
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        stopped INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (conversation_id, position)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def data_dir() -> Path:
    return Path(os.environ.get("ORCHARD_DATA_DIR") or platformdirs.user_data_dir("orchard"))


@dataclass
class Conversation:
    id: int | None = None
    title: str = "New chat"
    model: str | None = None  # the model reference it was started with (None: the default)
    system_prompt: str = ""
    params: dict = field(default_factory=dict)
    messages: list[dict] = field(default_factory=list)
    updated: float = 0.0


class Store:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else data_dir() / "conversations.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path)
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise OrchardError(f"{self.path}: cannot open the conversations database ({e})") from None

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise OrchardError(
                f"{self.path}: schema version {version} is newer than this Orchard knows ({SCHEMA_VERSION}); "
                "upgrade Orchard"
            )
        for target in range(version, SCHEMA_VERSION):
            with self.db:
                self.db.executescript(MIGRATIONS[target])
                self.db.execute(f"PRAGMA user_version = {target + 1}")

    def close(self) -> None:
        self.db.close()

    def list(self) -> list[Conversation]:
        """Newest first, without messages."""
        rows = self.db.execute(
            "SELECT id, title, model, system_prompt, params, updated FROM conversations ORDER BY updated DESC, id DESC"
        ).fetchall()
        return [Conversation(r[0], r[1], r[2], r[3], json.loads(r[4]), [], r[5]) for r in rows]

    def load(self, conversation_id: int) -> Conversation:
        row = self.db.execute(
            "SELECT id, title, model, system_prompt, params, updated FROM conversations WHERE id = ?",
            (conversation_id,),
        ).fetchone()
        if row is None:
            raise OrchardError(f"no saved conversation with id {conversation_id}")
        messages = [
            {"role": role, "content": content, **({"stopped": True} if stopped else {})}
            for role, content, stopped in self.db.execute(
                "SELECT role, content, stopped FROM messages WHERE conversation_id = ? ORDER BY position",
                (conversation_id,),
            )
        ]
        return Conversation(row[0], row[1], row[2], row[3], json.loads(row[4]), messages, row[5])

    def save(self, conv: Conversation) -> Conversation:
        """Insert or update the conversation and replace its messages, in one transaction."""
        now = time.time()
        with self.db:
            if conv.id is None:
                cur = self.db.execute(
                    "INSERT INTO conversations (title, model, system_prompt, params, created, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (conv.title, conv.model, conv.system_prompt, json.dumps(conv.params), now, now),
                )
                conv.id = cur.lastrowid
            else:
                self.db.execute(
                    "UPDATE conversations SET title = ?, model = ?, system_prompt = ?, params = ?, updated = ? "
                    "WHERE id = ?",
                    (conv.title, conv.model, conv.system_prompt, json.dumps(conv.params), now, conv.id),
                )
            self.db.execute("DELETE FROM messages WHERE conversation_id = ?", (conv.id,))
            self.db.executemany(
                "INSERT INTO messages (conversation_id, position, role, content, stopped) VALUES (?, ?, ?, ?, ?)",
                [(conv.id, i, m["role"], m["content"], int(bool(m.get("stopped")))) for i, m in enumerate(conv.messages)],
            )
        conv.updated = now
        return conv

    def rename(self, conversation_id: int, title: str) -> None:
        with self.db:
            self.db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))

    def delete(self, conversation_id: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))


def title_from(text: str, limit: int = 40) -> str:
    """A conversation's title from its first message: the first line, shortened."""
    line = text.strip().splitlines()[0] if text.strip() else "New chat"
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
