"""`orchard convert`'s quality check stays within a memory budget: one model evaluated at a time, and
none that would take more than a fraction of physical memory (it says so, in one line, instead)."""

from __future__ import annotations

import weakref

import pytest

from conftest import FIXTURES

SRC = FIXTURES / "llama3-v5"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from mlxmodels.convert import convert

    return convert(SRC, tmp_path_factory.mktemp("quality") / "out").out


def test_a_model_over_the_memory_budget_is_not_evaluated(tmp_path, capsys, monkeypatch):
    from app.main import main
    from mlxmodels import cpu_weights

    monkeypatch.setattr(cpu_weights, "physical_memory", lambda: 100_000)  # a 0.1 MB machine
    assert main(["convert", str(SRC), "-o", str(tmp_path / "out")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("quality")]
    assert len(lines) == 1
    assert lines[0].startswith("quality: not measured (the source model takes 0.0 GB evaluated in float")
    assert lines[0].endswith("over 50% of this machine's 0.0 GB)")


def test_the_source_is_released_before_the_converted_model_runs(converted, monkeypatch):
    import mlxmodels
    from mlxmodels import quality

    evaluated = []
    real = quality.log_probs

    def spy(model, ids):
        alive = [ref() is not None for ref in evaluated]
        evaluated.append(weakref.ref(model))
        assert not any(alive), "a model evaluated earlier is still in memory"
        return real(model, ids)

    monkeypatch.setattr(quality, "log_probs", spy)
    measured = quality.measure(SRC, converted, tokens=32)
    assert len(evaluated) == 2
    monkeypatch.setattr(quality, "log_probs", real)
    # The same numbers as comparing the two models held side by side.
    model, tokenizer = mlxmodels.load(converted)
    both = quality.compare(mlxmodels.load_model(SRC), model, quality.calibration_ids(tokenizer, 32))
    assert measured.tokens == both.tokens == 32
    assert measured.perplexity_source == pytest.approx(both.perplexity_source, rel=1e-5)
    assert measured.mean_kl == pytest.approx(both.mean_kl, rel=1e-3, abs=1e-7)
