"""Model references → files on disk.

A reference is, in the order tried: nothing (the default model: the user's config.toml
`default_model`, else SmolLM2-135M-Instruct), an existing path (model directory or `.gguf` file), a
catalog name (assets/catalog.json), or a Hugging Face repo id (`org/name`), downloaded with
huggingface-hub (only the files a model needs, cache first, an interrupted download resumed).
"""

from __future__ import annotations

import importlib
import json
import re
from importlib import resources
from pathlib import Path

from mlxmodels.errors import ModelNotFoundError, OfflineError
from mlxmodels.paths import cache_dir, user_settings

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
    """The local snapshot of a hub repo, complete: from the cache once verified, else downloaded.

    huggingface_hub's cache-only lookup returns a snapshot folder as soon as one exists, and an
    interrupted download leaves one holding only some of the files (older huggingface_hub versions
    check nothing). So a cached snapshot is used as it is only after Orchard has seen every file
    the repo lists (of those it asks for) there with the listed size, and recorded so in its own
    cache (`hub/<org>--<name>/<commit>.json`). Otherwise the repo's listing is fetched and
    `snapshot_download` resumes: files already there are kept, partial ones continued.
    """
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    cached = _cached_snapshot(repo_id)
    if cached is not None and _verified(repo_id, cached):
        return cached
    try:
        commit, files = _listing(repo_id)
        path = _snapshot(repo_id)
        if path.name != commit:  # the repo moved on between the two calls: list what was fetched
            commit, files = _listing(repo_id, path.name)
    except (RepositoryNotFoundError, GatedRepoError) as e:
        kind = "gated (accept its licence and log in)" if isinstance(e, GatedRepoError) else "not found"
        raise ModelNotFoundError(f"{repo_id}: Hugging Face repo {kind}") from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"{repo_id}: revision not found on the Hugging Face Hub") from None
    except _hub_errors():
        return _unverified(repo_id, cached)
    problems = _problems(path, files)
    if problems:
        name, size = problems[0]
        if size is None:
            raise OfflineError(f"{repo_id}: the download stopped before {name} ({len(problems)} of {len(files)} "
                               "files missing); run again to resume it")
        raise OfflineError(f"{path / name}: {size} bytes where the Hugging Face Hub lists {files[name]} "
                           "(a damaged download: delete it and run again)")
    _record(repo_id, commit, files)
    return path


def _cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder the cache holds for the repo's main revision, complete or not."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except Exception as e:  # not cached; or (huggingface_hub >= 1.x) known to be incomplete
        where = getattr(e, "snapshot_path", None)
        return Path(where) if where else None


def _snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))


def _listing(repo_id: str, revision: str | None = None) -> tuple[str, dict]:
    """(commit, {file: size in bytes}) of the files the repo lists that Orchard downloads."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    sizes = {f.rfilename: f.size for f in info.siblings or []}
    return info.sha, {name: sizes[name] for name in filter_repo_objects(list(sizes), allow_patterns=HUB_PATTERNS)}


def _record_path(repo_id: str, commit: str) -> Path:
    return cache_dir() / "hub" / repo_id.replace("/", "--") / f"{commit}.json"


def _record(repo_id: str, commit: str, files: dict) -> None:
    """Note that the snapshot of `commit` was seen complete (written atomically)."""
    path = _record_path(repo_id, commit)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"files": files}))
    partial.replace(path)


def _verified(repo_id: str, folder: Path) -> bool:
    """Whether Orchard saw this snapshot complete, and it still is."""
    try:
        files = json.loads(_record_path(repo_id, folder.name).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(files, dict) and not _problems(folder, files)


def _problems(folder: Path, files: dict) -> list[tuple[str, int | None]]:
    """(file, its size on disk, None if absent) for each listed file absent or of another size."""
    found = []
    for name, size in files.items():
        path = folder / name
        actual = path.stat().st_size if path.is_file() else None
        if actual is None or (size is not None and actual != size):
            found.append((name, actual))
    return found


def _hub_errors() -> tuple:
    """What the hub client raises when the Hub cannot be reached or answers with an error:
    OSError (requests, offline mode, HTTP errors) and httpx's errors in huggingface_hub >= 1.x."""
    errors = [OSError]
    for module in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _unverified(repo_id: str, cached: Path | None) -> Path:
    """Offline: a cached snapshot Orchard never saw complete is used when its config and every
    weight shard are there (all that can be checked without the Hub's listing)."""
    if cached is None:
        raise OfflineError(
            f"{repo_id}: not in the local cache and the Hugging Face Hub cannot be reached (offline?)"
        ) from None
    gap = _essential_gap(cached)
    if gap:
        raise OfflineError(
            f"{repo_id}: the download in the local cache is incomplete ({gap}) and the Hugging Face Hub "
            "cannot be reached to finish it (offline?)"
        ) from None
    return cached


def _essential_gap(folder: Path) -> str | None:
    """What a model directory lacks of its config and weight shards, in words; None if nothing."""
    if not (folder / "config.json").is_file():
        return "config.json is missing"
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return None if any(folder.glob("*.safetensors")) else "no .safetensors file"
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{index.name} is unreadable"
    missing = [shard for shard in shards if not (folder / shard).is_file()]
    return f"{missing[0]} is missing" if missing else None
