"""Every bad input a user can reach: one line naming the culprit, non-zero exit, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.main import main
from helpers import edit_config, make_tiny_model


@pytest.fixture()
def tiny(tmp_path, default_model_dir):
    return make_tiny_model(tmp_path / "tiny", tokenizer_from=default_model_dir)


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["run", "--temp", "0", "--max-tokens", "2", *args])
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("orchard: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_missing_path(capsys, tmp_path):
    code, err = run_cli(capsys, "--model", str(tmp_path / "nope"), "--prompt", "hi")
    assert_one_line_error(code, err, str(tmp_path / "nope"), "no such file or directory")


def test_directory_without_config(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, "--model", str(tmp_path / "empty"), "--prompt", "hi")
    assert_one_line_error(code, err, "empty", "no config.json")


def test_unknown_model_type_lists_supported(capsys, tiny):
    edit_config(tiny, model_type="gpt_neox_cyborg")
    code, err = run_cli(capsys, "--model", str(tiny), "--prompt", "hi")
    assert_one_line_error(code, err, "config.json", "gpt_neox_cyborg", "llama", "qwen3", "gemma3_text")


def test_config_missing_required_field(capsys, tiny):
    edit_config(tiny, hidden_size=None)
    code, err = run_cli(capsys, "--model", str(tiny), "--prompt", "hi")
    assert_one_line_error(code, err, "config.json", "'hidden_size'")


def test_config_field_of_wrong_type(capsys, tiny):
    edit_config(tiny, num_attention_heads="four")
    code, err = run_cli(capsys, "--model", str(tiny), "--prompt", "hi")
    assert_one_line_error(code, err, "config.json", "'num_attention_heads'")


def test_truncated_safetensors(capsys, tiny):
    weights = tiny / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    code, err = run_cli(capsys, "--model", str(tiny), "--prompt", "hi")
    assert_one_line_error(code, err, "model.safetensors", "truncated")


def test_garbage_safetensors(capsys, tiny):
    (tiny / "model.safetensors").write_bytes(b"\x00" * 5)
    code, err = run_cli(capsys, "--model", str(tiny), "--prompt", "hi")
    assert_one_line_error(code, err, "model.safetensors", "not a safetensors file")


def test_corrupt_gguf(capsys, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(64))
    code, err = run_cli(capsys, "--model", str(bad), "--prompt", "hi")
    assert_one_line_error(code, err, "model.gguf", "GGUF")


def test_truncated_gguf(capsys, tmp_path, default_gguf_path):
    source = default_gguf_path
    truncated = tmp_path / "cut.gguf"
    with open(source, "rb") as f:
        truncated.write_bytes(f.read(20_000_000))
    code, err = run_cli(capsys, "--model", str(truncated), "--prompt", "hi")
    assert_one_line_error(code, err, "cut.gguf", "truncated")


def test_weights_not_matching_config(capsys, tiny):
    edit_config(tiny, intermediate_size=96)
    code, err = run_cli(capsys, "--model", str(tiny), "--prompt", "hi")
    assert_one_line_error(code, err, "model.safetensors", "mlp", "shape", "(128, 64)", "(96, 64)")


def test_prompt_longer_than_context(capsys, tiny):
    code, err = run_cli(capsys, "--model", str(tiny), "--prompt", "apple " * 100)
    assert_one_line_error(code, err, "prompt", "context is 64 tokens")


def test_offline_hub_id(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = run_cli(capsys, "--model", "orchard-tests/no-such-model", "--prompt", "hi")
    assert_one_line_error(code, err, "orchard-tests/no-such-model", "offline")


def test_unknown_reference(capsys):
    code, err = run_cli(capsys, "--model", "definitely not a model", "--prompt", "hi")
    assert_one_line_error(code, err, "definitely not a model", "catalog name")


def test_bad_sampling_value(capsys, tiny):
    code, err = run_cli(capsys, "--model", str(tiny), "--prompt", "hi", "--top-p", "2")
    assert_one_line_error(code, err, "top-p")


def test_debug_shows_the_traceback(tmp_path):
    """The same error through the real console entry point, with and without --debug."""
    base = [sys.executable, "-m", "app.main"]
    args = ["run", "--model", str(tmp_path / "nope"), "--prompt", "hi"]
    plain = subprocess.run(base + args, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    debug = subprocess.run(base + ["--debug"] + args, capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_bad_kernel_mode_setting(capsys, monkeypatch):
    monkeypatch.setenv("ORCHARD_KERNELS", "turbo")
    code, err = run_cli(capsys, "--prompt", "hi")
    assert_one_line_error(code, err, "ORCHARD_KERNELS", "turbo")


def test_bad_cpu_math_setting(capsys, monkeypatch):
    monkeypatch.setenv("ORCHARD_CPU_MATH", "off")
    code, err = run_cli(capsys, "--prompt", "hi")
    assert_one_line_error(code, err, "ORCHARD_CPU_MATH", "off")


def test_prompt_on_stdin_that_is_not_utf8_reaches_the_model_with_one_warning(capsys, monkeypatch, tiny):
    """Bytes that are not UTF-8 (a Latin-1 'é', a stray 0xff) become U+FFFD, with one warning line
    saying how many and where, instead of a traceback."""
    import io

    import mlxmodels

    seen = []
    real = mlxmodels.stream_generate
    monkeypatch.setattr(mlxmodels, "stream_generate", lambda m, t, text, **k: seen.append(text) or real(m, t, text, **k))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 au lait\xff"), encoding="utf-8"))
    code, err = run_cli(capsys, "--model", str(tiny), "--no-chat-template", "--prompt", "-")
    assert code == 0 and "Traceback" not in err
    assert [line for line in err.splitlines() if "UTF-8" in line] == [
        "orchard: warning: the prompt on stdin is not valid UTF-8: 2 invalid byte sequences (the first at byte 3) "
        "replaced with U+FFFD"]
    assert seen == ["caf\ufffd au lait\ufffd"]


def test_prompt_argument_with_undecodable_bytes_gets_the_same_treatment(capsys, tiny):
    # Python hands argv bytes that are not UTF-8 over as lone surrogates ("\udce9" for 0xe9).
    code, err = run_cli(capsys, "--model", str(tiny), "--prompt", "caf\udce9")
    assert code == 0 and "Traceback" not in err
    assert ("orchard: warning: --prompt is not valid UTF-8: 1 invalid byte sequence (the first at byte 3) "
            "replaced with U+FFFD") in err.splitlines()
