"""Model conversion: any model Orchard reads -> an MLX model directory, quantized or not.

The conversion streams: one tensor is read (lazily from a memory map), converted, evaluated and
added to the output shard being filled; a full shard is written and freed. Peak memory is thus
about the largest tensor plus one output shard, never the model. Everything is written into a
temporary directory beside the destination that is renamed into place at the end
(`export.atomic_directory`), so an interrupted or failed conversion leaves no output.

Quantization is MLX's affine scheme (`mx.quantize`): per group of `group_size` inputs, a scale and a
bias in the output float dtype. Which modules are quantized is decided by the family's own model:
every module that has a quantized form (linear layers, embeddings, expert stacks) and whose input
size is a multiple of the group size. The `mixed` recipe gives a few sensitive tensors more bits
(see `mixed_recipe`).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.errors import OrchardError, WeightsError
from mlxmodels.export import (
    MAX_SHARD_BYTES,
    atomic_directory,
    mlx_lm_config,
    mlx_lm_weight_names,
    remove_stale_partials,
)

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}
RECIPES = ("mixed",)
# Tokenizer and generation files a model directory may carry; copied as they are.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)

Progress = Callable[[int, int, str], None]  # (bytes done, bytes total, tensor name)


@dataclass
class ConvertOptions:
    bits: int = 4
    group_size: int = 64
    recipe: str | None = None
    dtype: str | None = None  # float dtype of what is not quantized; None: bfloat16 stays, else float16
    dequantize: bool = False
    force: bool = False
    max_shard_bytes: int = MAX_SHARD_BYTES

    def check(self) -> None:
        if self.bits not in BITS:
            raise OrchardError(f"--bits {self.bits} is not supported (choose from {', '.join(map(str, BITS))})")
        if self.group_size not in GROUP_SIZES:
            raise OrchardError(
                f"--group-size {self.group_size} is not supported (choose from {', '.join(map(str, GROUP_SIZES))})"
            )
        if self.recipe is not None and self.recipe not in RECIPES:
            raise OrchardError(f"--recipe {self.recipe} is not supported (choose from {', '.join(RECIPES)})")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise OrchardError(f"--dtype {self.dtype} is not supported (choose from {', '.join(DTYPES)})")
        if self.dequantize and self.recipe:
            raise OrchardError("--dequantize and --recipe exclude each other (a recipe chooses quantized bits)")


@dataclass
class ConvertResult:
    out: Path
    parameters: int = 0
    quantized_parameters: int = 0
    bits_per_weight: float = 0.0  # all tensors, embeddings and norms included
    size_before: int = 0
    size_after: int = 0
    seconds: float = 0.0
    peak_memory: int = 0  # MLX's peak allocation during the conversion above what was held before, bytes
    peak_rss: int = 0  # the process's peak resident set, bytes
    largest_tensor: int = 0
    shards: int = 0
    warnings: list = field(default_factory=list)


# ----------------------------------------------------------------------------------------- sources


class Source(Protocol):
    """What the converter reads: a config, tensor units in order, and how to save the tokenizer."""

    config: dict
    names: list  # one entry per unit: a float tensor, or a quantized module's ".weight"
    path: Path

    def load(self, name: str, dtype: mx.Dtype | None = None) -> dict:
        """{name: array} or {module.weight/.scales/.biases}; `dtype`: a hint for dequantized data."""
        ...

    def nbytes(self, name: str) -> int:
        ...

    def quant_layout(self, module: str, arrays: dict) -> tuple[int, int, str]:
        """(bits, group_size, mode) of a quantized module of the source (mode: MLX's "affine",
        "mxfp4", ...)."""
        ...

    def float_dtype(self) -> mx.Dtype:
        """The source's float dtype, known without reading any data."""
        ...

    def base_bits(self) -> int | None:
        """The bits most of the source's quantized weights use; None for a float source."""
        ...

    def save_tokenizer(self, directory: Path) -> bool:
        ...


class DirectorySource(Source):
    """A Hugging Face or MLX model directory, memory-mapped through `mx.load` (lazy arrays)."""

    def __init__(self, path: Path):
        from mlxmodels.config import read_config
        from mlxmodels.models import build_model
        from mlxmodels.weights import read_weights

        self.path = path
        self.config = read_config(path)
        weights, _ = read_weights(path)
        # The family's sanitize maps checkpoint names to ours (and stacks MoE experts), lazily.
        self.weights = build_model(self.config).sanitize(weights)
        quantized = {k[: -len(".scales")] for k in self.weights if k.endswith(".scales")}
        self.names = [
            k for k in self.weights
            if not (k.endswith((".scales", ".biases")) and k.rpartition(".")[0] in quantized)
        ]
        self._quantized = quantized

    def load(self, name: str, dtype: mx.Dtype | None = None) -> dict:
        module = name.rpartition(".")[0]
        if module in self._quantized and name.endswith(".weight"):
            return {f"{module}.{p}": self.weights[f"{module}.{p}"] for p in ("weight", "scales", "biases")
                    if f"{module}.{p}" in self.weights}
        return {name: self.weights[name]}

    def nbytes(self, name: str) -> int:
        return sum(v.nbytes for v in self.load(name).values())

    def float_dtype(self) -> mx.Dtype:
        from mlxmodels.loading import checkpoint_dtype

        return checkpoint_dtype(self.config, self.weights)

    def quant_layout(self, module: str, arrays: dict) -> tuple[int, int, str]:
        # The shapes alone are ambiguous (4 bits / group 64 packs like 8 bits / group 32): the
        # config's `quantization` block (with per-module entries) says which.
        from mlxmodels.loading import quantization_settings

        q = quantization_settings(self.config) or {}
        entry = q.get(module)
        entry = entry if isinstance(entry, dict) else q
        if "bits" not in entry:
            raise WeightsError(f"{self.path}: '{module}' is quantized but config.json has no 'quantization' for it")
        # A per-module entry without a mode is affine (as nn.quantize reads it), whatever the default.
        return int(entry["bits"]), int(entry["group_size"]), entry.get("mode", "affine")

    def base_bits(self) -> int | None:
        from mlxmodels.loading import quantization_settings

        return (quantization_settings(self.config) or {}).get("bits")

    def save_tokenizer(self, directory: Path) -> bool:
        copied = False
        for file in TOKENIZER_FILES:
            if (self.path / file).is_file():
                shutil.copy(self.path / file, directory / file)
                copied = copied or file.startswith(("tokenizer", "vocab", "merges"))
        for file in self.path.glob("*.tiktoken"):
            shutil.copy(file, directory / file.name)
            copied = True
        return copied


class GGUFFileSource(Source):
    """A .gguf file, one tensor at a time (`gguf.GGUFSource`); its tokenizer rebuilt from metadata."""

    def __init__(self, path: Path):
        from mlxmodels.gguf import GGUFSource

        self.path = path
        self.gguf = GGUFSource(path)
        self.config = self.gguf.config
        self.names = self.gguf.names

    def load(self, name: str, dtype: mx.Dtype | None = None) -> dict:
        return self.gguf.load(name, dtype)

    def nbytes(self, name: str) -> int:
        return self.gguf.nbytes(name)

    def float_dtype(self) -> mx.Dtype:
        return mx.bfloat16 if "BF16" in self.gguf.tensor_types() else mx.float16

    def base_bits(self) -> int | None:
        # The file's predominant quantized type names its level (a "Q4_1" file keeps, say, an 8-bit
        # embedding on purpose).
        from mlxmodels.gguf_quants import NOMINAL_BITS

        counts = {k: n for k, n in self.gguf.tensor_types().items() if k in NOMINAL_BITS}
        return NOMINAL_BITS[max(counts, key=counts.get)] if counts else None

    def quant_layout(self, module: str, arrays: dict) -> tuple[int, int, str]:
        # Every GGUF type loads as MLX affine groups of 32 (gguf_quants): the words per group are the bits.
        w, s = arrays[f"{module}.weight"], arrays[f"{module}.scales"]
        return w.shape[-1] * 32 // (s.shape[-1] * 32), 32, "affine"

    def save_tokenizer(self, directory: Path) -> bool:
        from mlxmodels.tokenizer import gguf_hf_tokenizer

        if "tokenizer.ggml.tokens" not in self.gguf.tokenizer_metadata:
            return False
        gguf_hf_tokenizer(self.gguf.tokenizer_metadata, self.path).save_pretrained(str(directory))
        return True


def open_source(path: Path) -> Source:
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise OrchardError(f"{path}: not a model directory or a .gguf file")
        return GGUFFileSource(path)
    return DirectorySource(path)


# ----------------------------------------------------------------------------------------- recipes


def quantizable_modules(config: dict, group_size: int) -> dict[str, nn.Module]:
    """Modules that have a quantized form and whose input size is a multiple of the group size.

    The model is only built, never evaluated: its random initial parameters stay lazy (no memory).
    """
    from mlxmodels.models import build_model

    model = build_model(config)
    found = {}
    for path, module in model.named_modules():
        weight = getattr(module, "weight", None) if isinstance(module, nn.Module) else None
        if hasattr(module, "to_quantized") and weight is not None and weight.shape[-1] % group_size == 0:
            found[path] = module
    return found


def mixed_recipe(module: str, bits: int, num_layers: int) -> int:
    """Bits for `module` under the `mixed` recipe.

    Quantization error hurts most where it is not averaged away: the embeddings and the LM head (every
    token's input and output pass through them) and the value and down projections of the first and
    last blocks (their errors feed every later layer, or go straight into the logits). Those get two
    more bits (8 at most: 2->4, 3->5, 4->6, 5->8, 6->8); everything else keeps `bits`.
    """
    high = {2: 4, 3: 5, 4: 6, 5: 8, 6: 8, 8: 8}[bits]
    if module.endswith(("embed_tokens", "lm_head")):
        return high
    edge = max(1, num_layers // 8)
    parts = module.split(".")
    if "layers" in parts:
        index = int(parts[parts.index("layers") + 1])
        sensitive = module.endswith(("v_proj", "down_proj")) or ".experts.down_proj" in module
        if sensitive and (index < edge or index >= num_layers - edge):
            return high
    return bits


# -------------------------------------------------------------------------------------- conversion


class _ShardWriter:
    """Collects evaluated tensors and writes a shard whenever the next tensor would overflow it."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self.current, self.size, self.files, self.weight_map, self.total = {}, 0, [], {}, 0

    def add(self, arrays: dict) -> None:
        size = sum(v.nbytes for v in arrays.values())
        if self.current and self.size + size > self.max_bytes:
            self.flush()
        self.current.update(arrays)
        self.size += size
        self.total += size

    def flush(self) -> None:
        if not self.current:
            return
        name = f"part-{len(self.files) + 1}.safetensors"
        try:
            mx.save_safetensors(str(self.directory / name), self.current, metadata={"format": "mlx"})
        except (OSError, RuntimeError) as e:
            raise OrchardError(f"{self.directory}: cannot write {name} ({e}; out of disk space?)") from None
        self.weight_map.update({k: name for k in self.current})
        self.files.append(name)
        self.current, self.size = {}, 0

    def finish(self) -> int:
        """Give the shards their final names (and an index when there are several)."""
        self.flush()
        n = len(self.files)
        final = {f: ("model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors")
                 for i, f in enumerate(self.files, start=1)}
        for old, new in final.items():
            (self.directory / old).rename(self.directory / new)
        if n > 1:
            index = {"metadata": {"total_size": self.total},
                     "weight_map": {k: final[v] for k, v in self.weight_map.items()}}
            (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return n


def _out_dtype(options: ConvertOptions, source: Source) -> mx.Dtype:
    if options.dtype:
        return DTYPES[options.dtype]
    # bf16 checkpoints may hold values beyond float16's range: they stay bf16.
    return mx.bfloat16 if source.float_dtype() == mx.bfloat16 else mx.float16


def _check_disk(out: Path, source: Source, options: ConvertOptions) -> None:
    total = sum(source.nbytes(n) for n in source.names)
    # A generous estimate of the output: quantizing writes at most ~8.5/16 of a float16 source (kept
    # quantized tensors do not grow); dequantizing can grow 4-bit data 4x (float16) or 8x (float32).
    wide = options.dtype == "float32"
    need = total * (8 if wide else 4) if options.dequantize else int(total * 0.6 * (2 if wide else 1))
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise OrchardError(
            f"{out.parent}: not enough disk space ({free / 1e9:.2f} GB free, the conversion needs up to {need / 1e9:.2f} GB)"
        )


def convert(src, out, options: ConvertOptions | None = None, progress: Progress | None = None,
            source: Source | None = None) -> ConvertResult:
    """Convert `src` (a local model directory or .gguf file) into the MLX directory `out`."""
    options = options or ConvertOptions()
    options.check()
    out = Path(out).expanduser().resolve()
    if out.exists() and not options.force:
        raise OrchardError(f"{out}: already exists (pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    source = source or open_source(Path(src))
    _check_disk(out, source, options)

    result = ConvertResult(out=out)
    start = time.perf_counter()
    mx.reset_peak_memory()
    # What the process already holds (e.g. a model loaded earlier) is not the conversion's cost.
    baseline = mx.get_active_memory()
    config = dict(source.config)
    out_dtype = _out_dtype(options, source)
    modules = {} if options.dequantize else quantizable_modules(config, options.group_size)
    num_layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 1)
    total = sum(source.nbytes(n) for n in source.names)
    layouts: dict[str, tuple[int, int, str]] = {}  # module -> (bits, group_size, mode)
    weight_bits = 0
    done = 0

    with atomic_directory(out, overwrite=options.force) as tmp:
        writer = _ShardWriter(tmp, options.max_shard_bytes)
        mlx_lm_name = mlx_lm_weight_names(config)
        source_bits = source.base_bits()
        keeps_mix = source_bits is not None and source_bits <= options.bits
        for name in source.names:
            arrays = source.load(name, out_dtype)
            size_in = source.nbytes(name)
            module = name.rpartition(".")[0]
            converted = _convert_unit(source, name, module, arrays, modules, options, out_dtype, num_layers,
                                      layouts, keeps_mix)
            mx.eval(converted)
            writer.add({mlx_lm_name(k): v for k, v in converted.items()})
            for k, v in converted.items():
                weight_bits += v.nbytes * 8
            if module in layouts and f"{module}.weight" in converted:
                w = converted[f"{module}.weight"]
                count = w.size * 32 // layouts[module][0]
                result.quantized_parameters += count
            else:
                count = sum(v.size for v in converted.values())
            result.parameters += count
            result.largest_tensor = max(result.largest_tensor, size_in)
            result.size_before += size_in
            del arrays, converted
            mx.clear_cache()  # freed buffers would otherwise pile up in MLX's cache
            done += size_in
            if progress:
                progress(done, total, name)
        result.shards = writer.finish()
        result.size_after = writer.total
        config = _output_config(config, {mlx_lm_name(m): v for m, v in layouts.items()}, options)
        (tmp / "config.json").write_text(json.dumps(mlx_lm_config(config), indent=2))
        if not source.save_tokenizer(tmp):
            result.warnings.append(f"{source.path}: no tokenizer files; the converted model cannot encode text")
        _hook("before_rename")
    result.seconds = time.perf_counter() - start
    result.bits_per_weight = weight_bits / max(result.parameters, 1)
    result.peak_memory = mx.get_peak_memory() - baseline
    result.peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return result


def _hook(point: str) -> None:
    """Test hook: ORCHARD_CONVERT_PAUSE=<seconds> sleeps at a point so a test can interrupt there."""
    delay = os.environ.get("ORCHARD_CONVERT_PAUSE")
    if delay:
        print(f"orchard-convert-hook: {point}", flush=True)
        time.sleep(float(delay))


def _convert_unit(source, name, module, arrays, modules, options, out_dtype, num_layers, layouts,
                  keeps_mix: bool = False) -> dict:
    """One tensor (or one quantized module's triple) as it is written to the output.

    `keeps_mix`: the source is already quantized at or below the asked bits, so its quantized
    tensors are carried over as they are (its own mix of precisions included)."""
    if f"{module}.scales" in arrays:
        src_bits, src_group, src_mode = source.quant_layout(module, arrays)
        target = None if options.dequantize else _target_bits(module, options, num_layers)
        if target is not None and (src_bits <= target or keeps_mix):
            # Already at or below the bits asked for, or part of a source already quantized that
            # far (e.g. a Q4 GGUF's 8-bit embedding): requantizing could only add error. Kept as is.
            layouts[module] = (src_bits, src_group, src_mode)
            # Float scales and biases take the output dtype; MXFP4's uint8 exponents stay as they are.
            return {k: (v.astype(out_dtype) if mx.issubdtype(v.dtype, mx.floating) else v) for k, v in arrays.items()}
        parts = [arrays[f"{module}.{p}"] for p in ("weight", "scales", "biases") if f"{module}.{p}" in arrays]

        def dequantize(w, scales, biases=None):
            return mx.dequantize(w, scales, biases, group_size=src_group, bits=src_bits, mode=src_mode)

        if target is None or module not in modules:
            return {f"{module}.weight": _by_rows(lambda *a: (dequantize(*a).astype(out_dtype),), parts)[0]}
        layouts[module] = (target, options.group_size, "affine")
        return _quantized(module, _by_rows(
            lambda *a: mx.quantize(dequantize(*a).astype(out_dtype), group_size=options.group_size, bits=target),
            parts))
    value = arrays[name]
    if name.endswith(".weight") and module in modules and mx.issubdtype(value.dtype, mx.floating):
        bits = _target_bits(module, options, num_layers)
        layouts[module] = (bits, options.group_size, "affine")
        return _quantized(module, _by_rows(
            lambda w: mx.quantize(w.astype(out_dtype), group_size=options.group_size, bits=bits), [value]))
    if mx.issubdtype(value.dtype, mx.floating):
        return {name: value.astype(out_dtype)}
    return {name: value}


def _quantized(module: str, triple) -> dict:
    return dict(zip((f"{module}.weight", f"{module}.scales", f"{module}.biases"), triple))


def _by_rows(fn, inputs: list) -> list:
    """`fn` applied to blocks of rows of `inputs` (same leading shape), results concatenated.

    Quantization groups never span rows, so the result is exactly that of one call; evaluating a
    block at a time keeps the float temporaries of a large embedding small.
    """
    lead = inputs[0].shape[:-1]
    flat = [x.reshape(-1, x.shape[-1]) for x in inputs]
    step = max(1, (1 << 22) // max(x.shape[-1] for x in flat))
    blocks = []
    for i in range(0, flat[0].shape[0], step):
        out = fn(*(x[i : i + step] for x in flat))
        mx.eval(out)
        blocks.append(out)
    joined = [mx.concatenate(parts) if len(parts) > 1 else parts[0] for parts in zip(*blocks)]
    return [x.reshape(*lead, x.shape[-1]) for x in joined]


def _target_bits(module: str, options: ConvertOptions, num_layers: int) -> int:
    if options.recipe == "mixed":
        return mixed_recipe(module, options.bits, num_layers)
    return options.bits


def _output_config(config: dict, layouts: dict, options: ConvertOptions) -> dict:
    """The source config with MLX's `quantization` block (per-module entries where they differ)."""
    config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    if not layouts:
        return config
    q = {"group_size": options.group_size, "bits": options.bits, "mode": "affine"}
    for module, (bits, group_size, mode) in sorted(layouts.items()):
        if (bits, group_size, mode) != (options.bits, options.group_size, "affine"):
            q[module] = {"group_size": group_size, "bits": bits}
            if mode != "affine":  # e.g. gpt-oss's MXFP4 experts, kept as they are
                q[module]["mode"] = mode
    config["quantization"] = q
    config["quantization_config"] = q  # mlx-lm writes both; older readers look for the second
    return config
