"""`orchard convert` never leaves a half model: bad input is a one-line error and no output;
an interrupted conversion leaves neither OUT nor its temporary directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.main import main
from mlxmodels.convert import ConvertOptions, convert
from mlxmodels.errors import OrchardError
from conftest import FIXTURES

SRC = FIXTURES / "llama3-v5"


def _leftovers(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.partial-*"))


def _error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("orchard: error: ")
    return err[-1]


def test_existing_out_refused_without_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    message = _error(capsys, ["convert", str(SRC), "-o", str(out), "--no-eval"])
    assert f"{out}: already exists (pass --force to replace it)" in message
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["convert", str(SRC), "-o", str(out), "--no-eval", "--force"]) == 0
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()
    assert not _leftovers(out)


def test_not_a_model(tmp_path, capsys):
    src = tmp_path / "empty"
    src.mkdir()
    out = tmp_path / "out"
    message = _error(capsys, ["convert", str(src), "-o", str(out), "--no-eval"])
    assert f"{src}: no config.json (not a model directory)" in message
    assert not out.exists() and not _leftovers(out)


def test_unsupported_architecture(tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(SRC, src)
    (src / "config.json").write_text('{"model_type": "gpt_bigcode"}')
    out = tmp_path / "out"
    message = _error(capsys, ["convert", str(src), "-o", str(out), "--no-eval"])
    assert "unsupported model_type 'gpt_bigcode'" in message
    assert not out.exists()


def test_corrupt_weights(tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(SRC, src)
    shard = sorted(src.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    out = tmp_path / "out"
    message = _error(capsys, ["convert", str(src), "-o", str(out), "--no-eval"])
    assert f"{shard}: truncated" in message
    assert not out.exists()


def test_gguf_errors(tmp_path, capsys):
    from gguf import GGUFWriter

    bad_arch = tmp_path / "falcon.gguf"
    w = GGUFWriter(str(bad_arch), "falcon")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "out"
    message = _error(capsys, ["convert", str(bad_arch), "-o", str(out), "--no-eval"])
    assert (f"{bad_arch}: unsupported GGUF architecture 'falcon' "
            "(supported: llama, qwen2, qwen3, qwen3moe, gemma2, gemma3, phi3)") in message
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x05" * 10)
    message = _error(capsys, ["convert", str(truncated), "-o", str(out), "--no-eval"])
    assert f"{truncated}: corrupt or truncated GGUF file" in message
    assert not out.exists() and not _leftovers(out)


def test_bad_options():
    for options, text in [
        (ConvertOptions(bits=7), "--bits 7 is not supported"),
        (ConvertOptions(group_size=16), "--group-size 16 is not supported"),
        (ConvertOptions(recipe="fancy"), "--recipe fancy is not supported"),
        (ConvertOptions(dequantize=True, recipe="mixed"), "--dequantize and --recipe exclude each other"),
    ]:
        with pytest.raises(OrchardError, match=text):
            options.check()


def test_no_disk_space(tmp_path, monkeypatch, capsys):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    out = tmp_path / "out"
    message = _error(capsys, ["convert", str(SRC), "-o", str(out), "--no-eval"])
    assert f"{tmp_path}: not enough disk space" in message
    assert not out.exists() and not _leftovers(out)


def test_missing_tokenizer_warns(tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(SRC, src)
    for f in src.glob("tokenizer*"):
        f.unlink()
    out = tmp_path / "out"
    assert main(["convert", str(src), "-o", str(out), "--no-eval"]) == 0
    assert "orchard: warning: " in capsys.readouterr().err
    assert (out / "config.json").is_file()


def _start(out: Path) -> subprocess.Popen:
    """`orchard convert` paused by the test hook after writing everything, before the rename."""
    env = dict(os.environ, ORCHARD_CONVERT_PAUSE="60")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.main", "convert", str(SRC), "-o", str(out), "--no-eval"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parent.parent,
    )
    for line in proc.stdout:
        if line.startswith("orchard-convert-hook: before_rename"):
            break
    else:
        raise AssertionError(f"the conversion never reached the hook: {proc.stderr.read()}")
    assert _leftovers(out), "the conversion writes into a temporary directory beside OUT"
    return proc


def test_interrupted_conversion_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    proc = _start(out)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert "interrupted" in proc.stderr.read()
    assert not out.exists()
    assert not _leftovers(out)


def test_killed_conversion_is_cleaned_up_by_the_next(tmp_path):
    """SIGKILL allows no cleanup: OUT never appears, and the next conversion removes the leftover."""
    out = tmp_path / "out"
    proc = _start(out)
    proc.kill()
    proc.wait(timeout=60)
    assert not out.exists()
    assert _leftovers(out)
    convert(SRC, out, ConvertOptions())
    assert (out / "config.json").is_file()
    assert not _leftovers(out)
