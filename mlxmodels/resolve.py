"""Model references → files on disk.

A reference is, in the order tried: nothing (the default model: the user's config.toml
`default_model`, else SmolLM2-135M-Instruct), an existing path (model directory or `.gguf` file), a
catalog name (assets/catalog.json), or a Hugging Face repo id (`org/name`), downloaded with
huggingface-hub (only the files a model needs, cache first).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from mlxmodels.errors import ModelNotFoundError, OfflineError
from mlxmodels.paths import user_settings

HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.jinja", "*.txt"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def catalog() -> dict:
    text = resources.files("orchard_assets").joinpath("catalog.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def resolve(reference: str | None = None, progress=None) -> Path:
    """A local model directory or .gguf file for `reference` (see the module docstring)."""
    if reference is None or reference == "":
        reference = user_settings().get("default_model") or "smollm2-135m"
    path = Path(reference).expanduser()
    if path.exists():
        return path
    entries = catalog()
    if reference in entries:
        entry = entries[reference]
        if "builtin" in entry:
            from mlxmodels.default_model import ensure_default_model

            return ensure_default_model(**({"progress": progress} if progress else {}))
        return download(entry["repo"])
    looks_like_path = reference.startswith((".", "/", "~")) or reference.endswith(".gguf") or "\\" in reference
    if looks_like_path:
        raise ModelNotFoundError(f"{reference}: no such file or directory")
    if _REPO_ID.match(reference):
        return download(reference)
    raise ModelNotFoundError(
        f"{reference}: no such file or directory, catalog name ({', '.join(sorted(entries))}) "
        "or Hugging Face repo id (org/name)"
    )


def download(repo_id: str) -> Path:
    """The local snapshot of a hub repo: from the cache if complete, else downloaded (with progress)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except Exception:  # not (fully) cached: go online
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except (RepositoryNotFoundError, GatedRepoError) as e:
        kind = "gated (accept its licence and log in)" if isinstance(e, GatedRepoError) else "not found"
        raise ModelNotFoundError(f"{repo_id}: Hugging Face repo {kind}") from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"{repo_id}: revision not found on the Hugging Face Hub") from None
    except LocalEntryNotFoundError:
        raise OfflineError(
            f"{repo_id}: not in the local cache and the Hugging Face Hub cannot be reached (offline?)"
        ) from None
    except OSError as e:
        raise OfflineError(f"{repo_id}: download from the Hugging Face Hub failed ({e})") from None
