"""The local results store: every benchmark run appended as one JSON line.

Lives in the user data directory (`ORCHARD_DATA_DIR` overrides it, e.g. for tests). Appending
rewrites the file through a temporary file and a rename, so a crash never leaves a torn line.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import platformdirs

from mlxmodels.errors import OrchardError


def data_dir() -> Path:
    return Path(os.environ.get("ORCHARD_DATA_DIR") or platformdirs.user_data_dir("orchard"))


def results_path() -> Path:
    return data_dir() / "bench" / "results.jsonl"


def append(record: dict, path: Path | None = None) -> Path:
    path = Path(path or results_path())
    line = json.dumps(record, separators=(",", ":")) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        old = path.read_bytes() if path.exists() else b""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(old)
                f.write(line.encode())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise OrchardError(
            f"cannot write the results store {path}: {e.strerror or e} (set ORCHARD_DATA_DIR, or pass --no-store)"
        ) from None
    return path


def read_records(path: Path) -> list[dict]:
    """Every run in a results file: JSONL (one run per line) or one JSON document (`--json` output)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise OrchardError(f"{path}: cannot read ({e.strerror or e})") from None
    stripped = text.strip()
    if not stripped:
        return []
    records = []
    try:
        records = [json.loads(stripped)]
    except json.JSONDecodeError:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise OrchardError(f"{path}:{n}: not a JSON benchmark record ({e.msg})") from None
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, dict) or not isinstance(rec.get("results"), list) or "machine" not in rec:
            raise OrchardError(f"{path}: record {n} is not an `orchard bench` result (no 'machine'/'results')")
    return records
