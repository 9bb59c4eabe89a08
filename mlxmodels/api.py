"""The engine's front door: model references in, (model, tokenizer) out."""

from __future__ import annotations

from pathlib import Path

from mlxmodels.loading import load_model as _load_path
from mlxmodels.resolve import resolve
from mlxmodels.tokenizer import load_gguf_tokenizer, load_tokenizer


def load_model(reference, dtype=None, cpu_weights: str = "auto"):
    """The model alone (no tokenizer needed) for a directory, .gguf file, catalog name or repo id.

    `cpu_weights` ("auto", "fp32", "quantized") is the CPU backend's memory-for-speed policy.
    """
    return _load_path(resolve(str(reference)), dtype, cpu_weights)


def load(reference=None, dtype=None, progress=None, cpu_weights: str = "auto", prepare=None):
    """(model, tokenizer) for any model reference; None means the default model. `prepare`: see
    loading.assemble (distributed loading)."""
    path = resolve(None if reference is None else str(reference), progress=progress)
    if path.is_file():  # a .gguf: model and tokenizer come from the same metadata
        from mlxmodels.gguf import read_gguf
        from mlxmodels.loading import assemble

        gguf = read_gguf(path)
        model = assemble(gguf.config, gguf.weights, {}, path, dtype, cpu_weights, prepare)
        return model, load_gguf_tokenizer(gguf.tokenizer_metadata, path)
    model = _load_path(path, dtype, cpu_weights, prepare)
    tokenizer = load_tokenizer(Path(path), eos_token_ids=_config_eos(model.info.config))
    return model, tokenizer


def _config_eos(config: dict):
    """Extra end-of-sequence ids from config.json (Llama 3 lists several)."""
    eos = config.get("eos_token_id")
    if eos is None:
        return None
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def make_cache(model, kv_bits: int | None = None, kv_group_size: int = 64) -> list:
    """A fresh per-layer cache for `model(tokens, cache=...)`.

    `kv_bits` changes how full-attention layers store their keys and values: 4 or 8 quantized
    (`QuantizedKVCache`), 16 as float16 (`KVCache(mx.float16)`: exact to float16's precision, half a
    float32 cache's memory and of what each decode step reads). Sliding-window and recurrent layers
    keep their own caches; a layer that holds attention and SSM caches together
    (`AttentionSSMCache`) gets its attention part swapped. Multi-head Latent Attention layers
    quantize their per-token latents under 4 or 8 bits (`QuantizedLatentKVCache`) and keep them as
    they are under 16.
    """
    cache = model.make_cache()
    if kv_bits is None:
        return cache
    import mlx.core as mx

    from mlxmodels.cache import (AttentionSSMCache, KVCache, LatentKVCache, QuantizedKVCache,
                                 QuantizedLatentKVCache)
    from mlxmodels.errors import OrchardError

    if kv_bits not in KV_BITS:
        raise OrchardError(f"KV cache bits must be one of {', '.join(map(str, KV_BITS))}, got {kv_bits}")

    def stored(c):
        if type(c) is KVCache:
            return KVCache(mx.float16) if kv_bits == 16 else QuantizedKVCache(kv_bits, kv_group_size)
        if type(c) is LatentKVCache and kv_bits != 16:
            return QuantizedLatentKVCache(kv_bits, kv_group_size)
        if isinstance(c, AttentionSSMCache):
            return AttentionSSMCache(stored(c.attention), c.ssm)
        return c

    return [stored(c) for c in cache]


KV_BITS = (4, 8, 16)  # what `make_cache` and the --kv-bits options take


# Cache kinds `kv_bits` leaves alone, as the note that the flag changed nothing names them (None:
# nothing worth naming). Only attention caches grow with the context; these do not, but for the
# latent ones (which 16 bits keeps as they are).
_KEPT_CACHES = {"RotatingKVCache": "sliding-window attention (bounded by its window)",
                "ChunkedKVCache": "chunked attention (bounded by its chunk)",
                "LatentKVCache": "latent attention's latents (left as they are under 16 bits)",
                "SSMCache": "recurrent state (a fixed size)", "StatelessCache": None}


def kv_bits_no_effect(model, kv_bits: int = 8) -> str | None:
    """Why `make_cache(model, kv_bits)` would change no layer's cache at all, in words (the caller
    says so, rather than letting the flag silently do nothing); None when some layer's changes."""
    plain, changed = model.make_cache(), make_cache(model, kv_bits=kv_bits)

    def parts(layer) -> list:
        # A layer running attention and an SSM side by side (AttentionSSMCache) holds both kinds.
        return [layer.attention, layer.ssm] if hasattr(layer, "attention") and hasattr(layer, "ssm") else [layer]

    def signature(layer) -> list:
        return [(type(p), str(getattr(p, "dtype", None))) for p in parts(layer)]  # Dtype == None raises

    if any(signature(a) != signature(b) for a, b in zip(plain, changed)):
        return None
    kinds = []
    for part in (p for layer in plain for p in parts(layer)):
        kind = _KEPT_CACHES.get(type(part).__name__, type(part).__name__)
        if kind is not None and kind not in kinds:
            kinds.append(kind)
    change = "store as float16" if kv_bits == 16 else "quantize"
    return f"this model has no full-attention KV cache to {change}, only " + " and ".join(kinds)


def warm_up(model) -> None:
    """Run a 2-token prompt and one decode step on a throwaway cache.

    This materialises lazily loaded (and, on the CPU, converted) weights, and makes MLX JIT-compile
    the CPU backend's fused kernels (`layers/cpu_math.py`), ~0.3 s each the first time on a
    machine: a first answer's TTFT was 4.1 s with an empty kernel cache, 0.16 s with a warm one.
    Call it where the time is free, e.g. while a chat UI waits for the first message.
    """
    import mlx.core as mx

    cache = model.make_cache()
    mx.eval(model(mx.array([[0, 0]]), cache=cache))
    mx.eval(model(mx.array([[0]]), cache=cache))


def release_thread() -> None:
    """Free the MLX streams the calling thread created. MLX (0.32) leaves this to the program: a
    thread that ran MLX work and ends without it makes the process abort at exit ("terminate
    called without an active exception", exit 134). Call it last on every worker thread."""
    import mlx.core as mx

    clear = getattr(mx, "clear_streams", None)  # older MLX cleans up by itself
    if clear is not None:
        clear()
