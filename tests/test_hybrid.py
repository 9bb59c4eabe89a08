"""What every hybrid family (attention beside linear-attention, SSM or short-conv layers) shares,
checked on one fixture per family (tests/conftest.py: `hybrid_fixtures`):

- the recurrent layers' caches hold a fixed number of bytes however long the context, while the
  full-attention layers' caches grow with it (the point of these architectures);
- `--kv-bits` quantizes the full-attention layers' caches and leaves the recurrent states alone, and
  the logits stay close to the float cache's;
- `orchard run` answers on the fixture end to end.

Parity with transformers (full sequence and cached decoding) is in tests/test_parity.py; the chat's
prefix reuse in tests/test_chat_session.py.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES, hybrid_fixtures

import mlxmodels
from mlxmodels.cache import KVCache, LatentKVCache, QuantizedKVCache, QuantizedLatentKVCache, cache_state
from mlxmodels.config import read_config
from mlxmodels.models import build_model

HYBRIDS = hybrid_fixtures()


def layer_bytes(cache) -> list[int]:
    return [layer.nbytes for layer in cache]


def fill(model, cache, tokens: int):
    ids = mx.array(np.random.default_rng(0).integers(0, 128, (1, tokens)), dtype=mx.uint32)
    logits = model(ids, cache=cache)
    mx.eval(logits, cache_state(cache))
    return logits


def state_part(layer):
    """The fixed-size recurrent part of one layer's cache, if any (a composite holds its own)."""
    if attention_parts(layer):
        return getattr(layer, "ssm", None)
    return layer if layer.nbytes > 0 else None


def attention_parts(layer) -> list:
    """The attention caches (keys and values, or MLA latents) inside one layer's cache object (a
    composite holds its own)."""
    if isinstance(layer, (KVCache, LatentKVCache)):
        return [layer]
    part = getattr(layer, "attention", None)
    return [part] if isinstance(part, KVCache) else []


def test_every_hybrid_family_has_a_fixture():
    import json

    from conftest import HYBRID_TYPES

    types = {json.loads((FIXTURES / n / "config.json").read_text())["model_type"] for n in HYBRIDS}
    assert types == HYBRID_TYPES


@pytest.mark.parametrize("name", HYBRIDS)
def test_recurrent_state_is_fixed_attention_grows(name):
    model = mlxmodels.load_model(FIXTURES / name)
    short, long = model.make_cache(), model.make_cache()
    fill(model, short, 300)  # past the KV caches' first 256-token allocation step
    fill(model, long, 600)
    fixed = [(i, state_part(a), state_part(b)) for i, (a, b) in enumerate(zip(short, long)) if state_part(a)]
    assert fixed, f"{name}: no layer holds a recurrent state"
    for i, a, b in fixed:
        assert a.nbytes == b.nbytes > 0, f"layer {i}: state grew with the context"
    grows = [i for i, layer in enumerate(short) if attention_parts(layer)]
    for i in grows:
        before, after = attention_parts(short[i])[0], attention_parts(long[i])[0]
        assert after.nbytes > before.nbytes, f"layer {i}: attention cache did not grow"


def with_head_dim_32(config: dict) -> dict:
    """The fixture's config with 32-wide attention heads (the quantized KV cache groups 32 features at
    least; the parity fixtures use 16): an explicit head_dim, or fewer heads of the hidden size."""
    config = dict(config)
    if "kv_lora_rank" in config:  # MLA quantizes each token's latent + rope key as one row
        config["kv_lora_rank"] = 64 - config.get("qk_rope_head_dim", 0)
    if "head_dim" in config:
        config["head_dim"] = 32
    else:
        heads = config["hidden_size"] // 32
        config["num_attention_heads"] = heads
        config["num_key_value_heads"] = math.gcd(heads, config.get("num_key_value_heads") or heads)
    return config


@pytest.mark.parametrize("name", HYBRIDS)
def test_kv_bits_quantize_attention_layers_only(name):
    """8-bit keys and values: per-group affine quantization keeps each element within half a step
    (range / 255 / 2) of its float value, which moves these tiny models' logits by well under 5% of
    their scale; a cache that silently stayed float would leave them identical. The model is the
    fixture's family and layer pattern with 32-wide heads and random weights."""
    config = with_head_dim_32(read_config(FIXTURES / name))
    mx.random.seed(0)
    model = build_model(config)
    mx.eval(model.parameters())
    plain = mlxmodels.make_cache(model)
    quantized = mlxmodels.make_cache(model, kv_bits=8)
    kinds = [type(layer).__name__ for layer in plain]
    assert any(attention_parts(layer) for layer in plain), f"{name}: no attention layer ({kinds})"
    for before, after in zip(plain, quantized):
        if any(type(part) is KVCache for part in attention_parts(before)):
            holder = after if isinstance(after, QuantizedKVCache) else getattr(after, "attention", None)
            assert isinstance(holder, QuantizedKVCache), f"{name}: {type(after).__name__} kept a float KV cache"
        elif type(before) is LatentKVCache:  # MLA: the latent row is quantized instead
            assert isinstance(after, QuantizedLatentKVCache), f"{name}: {type(after).__name__} kept a float latent"
        else:  # recurrent states stay as they are
            assert type(after) is type(before)
    expected = np.array(fill(model, plain, 40))
    got = np.array(fill(model, quantized, 40))
    scale = np.abs(expected).max()
    error = np.abs(got - expected).max()
    assert 0 < error < 0.05 * scale, f"{name}: 8-bit KV moved the logits by {error:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("name", HYBRIDS)
def test_orchard_run_answers(name, capsys):
    from app.main import main

    code = main(["run", "--model", str(FIXTURES / name), "--prompt", "hi", "--temp", "0", "--max-tokens", "5"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "generation: " in err and "Traceback" not in err
    assert len(out.rstrip("\n")) <= 5  # char tokenizer: at most one character per token
