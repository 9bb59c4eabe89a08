"""The quantized and float16 KV caches end to end: the caches themselves, the attention hook that routes
the quantized one through metal_kernels.quantized_decode_attention, the float16 one through the native
one-query attention, and `--kv-bits` on the default model."""

from __future__ import annotations

import mlx.core as mx
import pytest

import mlxmodels
from metal_kernels import kernels
from mlxmodels.cache import KVCache, QuantizedKVCache, trim_cache
from mlxmodels.errors import OrchardError
from mlxmodels.models import build_model
from mlxmodels.prompt import format_messages
from mlxmodels.sampling import SamplingParams

# head_dim 64 (the kernel's quantized form needs a multiple of the group size), GQA 2:1.
TINY = {
    "model_type": "llama", "hidden_size": 128, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 256, "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
}


def test_cache_stores_what_mx_quantize_gives_and_rewinds():
    cache = QuantizedKVCache(bits=8, group_size=64)
    cache.step = 4  # force growth past the first buffer
    k = mx.random.normal((1, 2, 6, 64), key=mx.random.key(1))
    v = mx.random.normal((1, 2, 6, 64), key=mx.random.key(2))
    cache.update_and_fetch(k[:, :, :5], v[:, :, :5])
    kq, vq = cache.update_and_fetch(k[:, :, 5:], v[:, :, 5:])
    assert cache.offset == 6 and kq[0].shape == (1, 2, 6, 16) and kq[1].shape == (1, 2, 6, 1)
    for got, want in zip(kq + vq, mx.quantize(k, group_size=64, bits=8) + mx.quantize(v, group_size=64, bits=8)):
        assert mx.array_equal(got, want).item()
    assert cache.mask(1) is None and cache.mask(3) == "causal"
    snapshot = cache.copy()
    assert trim_cache([cache], 2) and cache.offset == 4
    kq2, _ = cache.update_and_fetch(k[:, :, 4:5], v[:, :, 4:5])
    assert kq2[0].shape[2] == 5 and mx.array_equal(kq2[0], kq[0][:, :, :5]).item()
    assert snapshot.offset == 6 and mx.array_equal(snapshot.keys[0], kq[0]).item()
    float_bytes = 2 * k.nbytes
    assert cache.nbytes < float_bytes  # 8-bit words + scales/biases vs float32


def test_float16_cache_stores_halves_and_rewinds():
    cache = KVCache(mx.float16)
    cache.step = 4  # force growth past the first buffer
    k = mx.random.normal((1, 2, 6, 64), key=mx.random.key(1))
    v = mx.random.normal((1, 2, 6, 64), key=mx.random.key(2))
    cache.update_and_fetch(k[:, :, :5], v[:, :, :5])
    got_k, got_v = cache.update_and_fetch(k[:, :, 5:], v[:, :, 5:])
    assert got_k.dtype == got_v.dtype == mx.float16 and got_k.shape == (1, 2, 6, 64)
    assert mx.array_equal(got_k, k.astype(mx.float16)).item() and mx.array_equal(got_v, v.astype(mx.float16)).item()
    snapshot = cache.copy()
    assert trim_cache([cache], 2) and cache.offset == 4
    again, _ = cache.update_and_fetch(k[:, :, 4:5], v[:, :, 4:5])
    assert again.dtype == mx.float16 and mx.array_equal(again, got_k[:, :, :5]).item()
    assert snapshot.dtype == mx.float16 and snapshot.offset == 6
    plain = KVCache()
    plain.step = 4
    plain.update_and_fetch(k, v)
    assert cache.nbytes * 2 == plain.nbytes


def test_bad_cache_settings_are_one_line_errors():
    with pytest.raises(OrchardError, match="KV cache bits must be one of 4, 8, 16, got 12"):
        mlxmodels.make_cache(build_model(TINY), kv_bits=12)
    with pytest.raises(OrchardError, match="KV cache bits must be 4 or 8, got 3"):
        QuantizedKVCache(bits=3)
    cache = QuantizedKVCache(bits=8)
    with pytest.raises(OrchardError, match="head dim divisible by 32; this model's is 16"):
        cache.update_and_fetch(mx.zeros((1, 1, 1, 16)), mx.zeros((1, 1, 1, 16)))


def test_make_cache_swaps_only_full_attention_layers():
    model = build_model(TINY)
    plain = mlxmodels.make_cache(model)
    assert all(type(c) is KVCache for c in plain)
    quant = mlxmodels.make_cache(model, kv_bits=4)
    assert all(isinstance(c, QuantizedKVCache) and c.bits == 4 for c in quant)
    halves = mlxmodels.make_cache(model, kv_bits=16)
    assert all(type(c) is KVCache and c.dtype == mx.float16 for c in halves)


def _decode_logits(model, cache, prompt, steps):
    logits = model(prompt[None], cache)
    out = [logits[:, -1]]
    for _ in range(steps):
        token = mx.argmax(out[-1], axis=-1)
        out.append(model(token[:, None], cache)[:, -1])
    return mx.stack(out)


def test_quantized_cache_attention_runs_the_kernel_and_matches_builtin(monkeypatch):
    # The engine's decode steps through the emulated kernel must match the built-in path
    # (dequantize + fused SDPA) on the same quantized cache.
    mx.random.seed(0)
    model = build_model(TINY)
    prompt = mx.array([3, 17, 99, 5, 42, 7], dtype=mx.int32)
    launched = []
    real_launch = kernels.launch
    monkeypatch.setattr(kernels, "launch", lambda k, *a, **kw: launched.append(k) or real_launch(k, *a, **kw))
    monkeypatch.setenv("ORCHARD_KERNELS", "emulate")
    emulated = _decode_logits(model, mlxmodels.make_cache(model, kv_bits=8), prompt, steps=2)
    assert kernels.QUANT_ATTENTION in launched  # the quantized-cache path really ran the kernel
    monkeypatch.setenv("ORCHARD_KERNELS", "builtin")
    builtin = _decode_logits(model, mlxmodels.make_cache(model, kv_bits=8), prompt, steps=2)
    # Same quantized inputs, float32 on both sides: differences are summation order only, ~1e-7 of
    # logits of order 1; 1e-4 leaves room for two layers of propagation and nothing more.
    assert mx.abs(emulated - builtin).max().item() < 1e-4
    plain = _decode_logits(model, mlxmodels.make_cache(model), prompt, steps=2)
    # 8-bit keys/values move the logits of this random model by well under 1% of their spread.
    assert mx.abs(builtin - plain).max().item() < 1e-2 * (plain.max() - plain.min()).item()


def test_float16_cache_decodes_through_the_native_attention_as_mlx_does(monkeypatch):
    """Decode steps over a float16 cache: the native one-query attention (which widens the halves as
    it reads them) against MLX's own attention over the same cache (ORCHARD_CPU_MATH=mlx: its fused
    SDPA on the keys and values cast to float32), and both against a float32 cache."""
    mx.random.seed(0)
    model = build_model(TINY)
    prompt = mx.array([3, 17, 99, 5, 42, 7], dtype=mx.int32)
    native = _decode_logits(model, mlxmodels.make_cache(model, kv_bits=16), prompt, steps=3)
    monkeypatch.setenv("ORCHARD_CPU_MATH", "mlx")
    reference = _decode_logits(model, mlxmodels.make_cache(model, kv_bits=16), prompt, steps=3)
    # The same float16 inputs widened exactly; every other op switches to MLX's too (norms, RoPE,
    # matmuls), so float32 sums in other orders through two layers: ~1e-5 on logits spread over ~10.
    assert mx.abs(native - reference).max().item() < 1e-4
    plain = _decode_logits(model, mlxmodels.make_cache(model), prompt, steps=3)
    # Keys and values rounded to float16 (2^-11 relative each) move these logits by ~1e-4 of their
    # spread; 5e-4 of it is one float16 rounding's worth, which a wrong widening would far exceed.
    assert mx.abs(native - plain).max().item() < 5e-4 * (plain.max() - plain.min()).item()


def test_greedy_text_with_8bit_cache_matches_float_cache(default_model):
    model, tokenizer = default_model
    prompt = format_messages(tokenizer, [{"role": "user", "content": "Name three fruits."}])
    greedy = SamplingParams(temperature=0.0)
    text, stats = mlxmodels.generate(model, tokenizer, prompt, max_tokens=20, sampling=greedy)
    text8, stats8 = mlxmodels.generate(model, tokenizer, prompt, max_tokens=20, sampling=greedy,
                                       cache=mlxmodels.make_cache(model, kv_bits=8))
    assert stats.generation_tokens >= 5
    assert stats8.tokens == stats.tokens, (text, text8)


@pytest.mark.parametrize("bits", [8, 16])
def test_orchard_run_kv_bits_uses_the_quantized_or_float16_cache(capsys, monkeypatch, default_model, bits):
    from app.main import main

    stored = []
    kind = QuantizedKVCache if bits == 8 else KVCache
    real = kind.update_and_fetch
    monkeypatch.setattr(kind, "update_and_fetch",
                        lambda self, k, v: stored.append(getattr(self, "dtype", "packed")) or real(self, k, v))
    code = main(["run", "--temp", "0", "--max-tokens", "12", "--kv-bits", str(bits), "-p", "Name three fruits."])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0 and "--kv-bits" not in captured.err  # no "changes nothing" note: it did
    # The flag really put that cache under every layer of the model.
    assert stored and all(d == ("packed" if bits == 8 else mx.float16) for d in stored)
    model, tokenizer = default_model
    prompt = format_messages(tokenizer, [{"role": "user", "content": "Name three fruits."}])
    text, _ = mlxmodels.generate(model, tokenizer, prompt, max_tokens=12, sampling=SamplingParams(temperature=0.0))
    assert out.rstrip("\n") == text  # same greedy text as the float cache


def test_kv_bits_on_a_model_it_cannot_quantize_is_a_one_line_error(capsys, tmp_path, default_model_dir):
    from app.main import main
    from helpers import make_tiny_model

    tiny = make_tiny_model(tmp_path / "tiny", tokenizer_from=default_model_dir)  # head dim 16
    code = main(["run", "-m", str(tiny), "--temp", "0", "--max-tokens", "2", "--kv-bits", "4", "-p", "hi"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0] == "orchard: error: a quantized KV cache needs a head dim divisible by 32; this model's is 16"


@pytest.mark.parametrize("name, kind", [("mamba", "recurrent state"), ("mamba2", "recurrent state"),
                                        ("mistral-swa", "sliding-window attention"),
                                        ("llama3-v5", None), ("falcon_h1", None)])
def test_kv_bits_says_when_no_layer_has_a_kv_cache_to_quantize(name, kind):
    """Every layer sliding-window or recurrent: nothing for --kv-bits to quantize, and the reason in
    words; a model with any full-attention layer (hybrids included) gets no such note."""
    from conftest import FIXTURES

    from mlxmodels.api import kv_bits_no_effect

    why = kv_bits_no_effect(mlxmodels.load_model(FIXTURES / name))
    if kind is None:
        assert why is None
    else:
        assert why == f"this model has no full-attention KV cache to quantize, only {kind}" + (
            " (a fixed size)" if kind == "recurrent state" else " (bounded by its window)")


def test_orchard_run_notes_that_kv_bits_changes_nothing(capsys, tmp_path, default_model_dir):
    from app.main import main
    from helpers import TINY_LLAMA, make_tiny_model

    config = dict(TINY_LLAMA, model_type="mistral", sliding_window=8)  # every layer has the window
    tiny = make_tiny_model(tmp_path / "swa", config, tokenizer_from=default_model_dir)
    for bits, change in (("8", "quantize"), ("16", "store as float16")):
        code = main(["run", "-m", str(tiny), "--temp", "0", "--max-tokens", "2", "--kv-bits", bits, "-p", "hi"])
        notes = [line for line in capsys.readouterr().err.splitlines() if "--kv-bits" in line]
        assert code == 0
        assert notes == [f"orchard: note: --kv-bits {bits} changes nothing: this model has no full-attention KV "
                         f"cache to {change}, only sliding-window attention (bounded by its window)"]
