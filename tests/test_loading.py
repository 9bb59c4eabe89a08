"""Loading paths beyond the parity fixtures: MLX-quantized directories (checked against mlx-lm),
sharded checkpoints, the user's default-model setting, stdin prompts."""

from __future__ import annotations

import io
import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from helpers import TINY_LLAMA, make_tiny_model
from mlx.utils import tree_flatten

import mlxmodels
from app.main import main
from mlxmodels.export import save_model_dir, write_weights
from mlxmodels.models import build_model


def quantized_copy(src, dst, config_changes=None):
    """Quantize a float model directory as mlx-lm's converter lays it out, with a per-layer override."""
    config = json.loads((src / "config.json").read_text())
    model = mlxmodels.load_model(src, cpu_weights="mlx")

    def predicate(path, module):
        if not hasattr(module, "to_quantized"):
            return False
        if path == "model.layers.0.mlp.down_proj":
            return {"group_size": 32, "bits": 8}  # a mixed recipe's high-precision layer
        return True

    nn.quantize(model, group_size=64, bits=4, class_predicate=predicate)
    config["quantization"] = {"group_size": 64, "bits": 4, "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8}}
    config.update(config_changes or {})
    save_model_dir(dst, config, dict(tree_flatten(model.parameters())), overwrite=True)
    return dst


def test_mlx_quantized_directory_matches_mlx_lm(tmp_path):
    import mlx_lm

    src = make_tiny_model(tmp_path / "float", dict(TINY_LLAMA, vocab_size=256, tie_word_embeddings=False))
    q = quantized_copy(src, tmp_path / "q4")
    ours = mlxmodels.load_model(q, cpu_weights="mlx")
    layer = ours.model.layers[0]
    assert isinstance(layer.mlp.down_proj, nn.QuantizedLinear) and layer.mlp.down_proj.bits == 8
    assert layer.mlp.up_proj.bits == 4 and isinstance(ours.model.embed_tokens, nn.QuantizedEmbedding)
    theirs, _ = mlx_lm.utils.load_model(q)
    theirs.set_dtype(mx.float32)
    ids = mx.array([[1, 5, 9, 200, 3, 77, 12, 0]])
    expected = np.array(theirs(ids))
    for policy in ("mlx", "fp32", "quantized"):
        got = np.array(mlxmodels.load_model(q, cpu_weights=policy)(ids))
        # Same quantized weights, fp32 compute; only the summation order differs.
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), policy


def test_sharded_checkpoint_loads_like_single_file(tmp_path):
    single = make_tiny_model(tmp_path / "single", dict(TINY_LLAMA, vocab_size=256))
    config = json.loads((single / "config.json").read_text())
    weights = mx.load(str(single / "model.safetensors"))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    write_weights(sharded, weights, max_bytes=64 * 1024)
    (sharded / "config.json").write_text(json.dumps(config))
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    ids = mx.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    a = mlxmodels.load_model(single)(ids)
    b = mlxmodels.load_model(sharded)(ids)
    assert mx.array_equal(a, b)


def test_missing_shard_is_named(tmp_path):
    single = make_tiny_model(tmp_path / "m", dict(TINY_LLAMA, vocab_size=256))
    weights = mx.load(str(single / "model.safetensors"))
    (single / "model.safetensors").unlink()
    write_weights(single, weights, max_bytes=64 * 1024)
    second = sorted(single.glob("model-*-of-*.safetensors"))[1]
    second.unlink()
    with pytest.raises(mlxmodels.OrchardError, match=second.name):
        mlxmodels.load_model(single)


def test_bfloat16_checkpoint_computes_in_float32_on_cpu(tmp_path):
    model = build_model(dict(TINY_LLAMA, vocab_size=256))
    weights = {k: (mx.random.normal(v.shape) * 0.05).astype(mx.bfloat16) for k, v in tree_flatten(model.parameters())}
    save_model_dir(tmp_path / "bf16", dict(TINY_LLAMA, vocab_size=256), weights)
    loaded = mlxmodels.load_model(tmp_path / "bf16")
    assert loaded.info.checkpoint_dtype == "bfloat16" and loaded.info.compute_dtype == "float32"
    assert loaded(mx.array([[1, 2, 3]])).dtype == mx.float32


def test_config_toml_names_the_default_model(tmp_path, monkeypatch, default_model_dir):
    tiny = make_tiny_model(tmp_path / "tiny", tokenizer_from=default_model_dir)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.toml").write_text(f'default_model = "{tiny}"\n')
    monkeypatch.setenv("ORCHARD_CONFIG_DIR", str(tmp_path / "config"))
    model, _ = mlxmodels.load()
    assert model.info.path == tiny


def test_broken_config_toml_is_named(tmp_path, monkeypatch):
    (tmp_path / "config.toml").write_text("default_model = \n")
    monkeypatch.setenv("ORCHARD_CONFIG_DIR", str(tmp_path))
    with pytest.raises(mlxmodels.OrchardError, match="config.toml"):
        mlxmodels.load()


def test_prompt_from_stdin(monkeypatch, capsys, default_model_dir):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is the capital of France?"))
    code = main(["run", "--model", str(default_model_dir), "--prompt", "-", "--temp", "0", "--max-tokens", "12"])
    out = capsys.readouterr()
    assert code == 0 and "Paris" in out.out


def test_stop_string_and_raw_prompt(capsys, default_model_dir):
    code = main(["run", "--model", str(default_model_dir), "--no-chat-template", "--temp", "0",
                 "--prompt", "1, 2, 3, 4,", "--stop", "7", "--max-tokens", "30"])
    out = capsys.readouterr()
    assert code == 0
    assert "7" not in out.out and "stop: stop_string" in out.err


def test_model_without_chat_template_gets_a_plain_transcript(tmp_path, capsys, default_model_dir):
    from mlxmodels.prompt import format_messages

    tiny = make_tiny_model(tmp_path / "tiny", dict(TINY_LLAMA, max_position_embeddings=256), tokenizer_from=default_model_dir)
    (tiny / "chat_template.jinja").unlink()
    model, tokenizer = mlxmodels.load(tiny)
    assert not tokenizer.has_chat_template
    text = format_messages(tokenizer, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == "System: Be brief.\nUser: Hi\nAssistant:"
    code = main(["run", "--model", str(tiny), "--prompt", "Hi", "--max-tokens", "3", "--temp", "0"])
    assert code == 0 and "no chat template" in capsys.readouterr().err


def test_catalog_families_are_supported():
    """Catalog entries that name their family name one Orchard implements (its module imports)."""
    from mlxmodels.models import FAMILIES, family_module
    from mlxmodels.resolve import catalog

    named = {name: entry["family"] for name, entry in catalog().items() if "family" in entry}
    assert len(named) >= 10
    for name, family in named.items():
        assert family in FAMILIES, name
        family_module({"model_type": family})


def test_checkpoint_dtype_is_the_bulk_of_the_weights_whatever_their_order():
    """GGUF-like weights: float32 norms (a minority), float16 scales and embeddings, packed ints. The
    first tensor's dtype must not decide; the config's declared dtype does when the weights hold it."""
    from itertools import permutations

    from mlxmodels.loading import checkpoint_dtype

    weights = {"model.norm.weight": mx.ones((64,), mx.float32), "embed.weight": mx.zeros((256, 64), mx.float16),
               "proj.scales": mx.zeros((64, 2), mx.float16), "proj.weight": mx.zeros((64, 8), mx.uint32)}
    for order in permutations(weights):
        assert checkpoint_dtype({}, {k: weights[k] for k in order}) == mx.float16
    assert checkpoint_dtype({"torch_dtype": "float32"}, weights) == mx.float32  # declared and present
    assert checkpoint_dtype({"dtype": "bfloat16"}, weights) == mx.float16  # declared, absent: stale
    tie = {"a": mx.zeros((8,), mx.bfloat16), "b": mx.zeros((8,), mx.float16)}
    assert checkpoint_dtype({}, tie) == checkpoint_dtype({}, dict(reversed(tie.items())))


def test_a_float32_minority_first_in_the_file_does_not_set_the_checkpoint_dtype(tmp_path):
    """Whichever tensor `mx.load` lists first (a hash order) is stored in float32, the rest float16."""
    config = dict(TINY_LLAMA, vocab_size=256)
    weights = {k: mx.random.normal(v.shape).astype(mx.float16) * 0.05
               for k, v in tree_flatten(build_model(config).parameters())}
    save_model_dir(tmp_path / "mixed", config, weights)
    first = next(iter(mx.load(str(tmp_path / "mixed" / "model.safetensors"))))
    weights[first] = weights[first].astype(mx.float32)
    save_model_dir(tmp_path / "mixed", config, weights, overwrite=True)
    assert next(iter(mx.load(str(tmp_path / "mixed" / "model.safetensors")))) == first
    assert weights[first].size * 4 < sum(v.size for v in weights.values())  # a minority
    assert mlxmodels.load_model(tmp_path / "mixed").info.checkpoint_dtype == "float16"
