"""From files on disk to a ready model: config → family → (quantized) modules → weights → dtype.

`load_model` takes a local model directory or a `.gguf` file. Turning a user's model reference
(hub id, catalog name, nothing) into such a path is `resolve.py`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from metal_kernels import backend_name
from mlxmodels.allocator import back_with_huge_pages
from mlxmodels.config import read_config
from mlxmodels.cpu_weights import apply_cpu_weight_policy, describe_policy, fp32_bytes
from mlxmodels.fuse import fuse_projections
from mlxmodels.errors import ConfigError, ModelNotFoundError
from mlxmodels.models import build_model
from mlxmodels.weights import check_against_model, read_weights


@dataclass
class ModelInfo:
    """What a loaded model is, for status bars, stats and benchmarks."""

    path: Path
    config: dict
    model_type: str
    quantization: dict | None
    checkpoint_dtype: str
    compute_dtype: str
    backend: str
    context_length: int
    cpu_weights: str = "native"  # CPU backend policy: "fp32", "quantized" or "native" (see cpu_weights.py)
    cpu_weights_bytes: int = 0  # extra memory the fp32 copies take
    cpu_weights_requested: str = "auto"  # what the caller asked for (`auto` decides by the budget)
    cpu_weights_fp32_needed: int = 0  # what fp32 copies would take, chosen or not
    huge_page_bytes: int = 0  # weight memory moved to 2 MB pages at load (allocator.back_with_huge_pages)

    def describe_cpu_weights(self) -> str | None:
        """What the CPU policy chose and its memory cost, in one line (None off the CPU)."""
        line = describe_policy(self.cpu_weights, self.cpu_weights_requested, self.cpu_weights_bytes,
                               self.cpu_weights_fp32_needed)
        if line is not None and self.huge_page_bytes:
            line += f"; {self.huge_page_bytes / 1e6:.0f} MB of weights on 2 MB pages"
        return line


def quantization_settings(config: dict) -> dict | None:
    """mlx-lm's `quantization` block (`quantization_config` is its older alias)."""
    q = config.get("quantization") or config.get("quantization_config")
    if q is None:
        return None
    if isinstance(q, dict) and q.get("quant_method") == "mxfp4":
        # gpt-oss's Hugging Face checkpoints: experts as MXFP4 blocks and scales, which the family's
        # `sanitize` hands over in MLX's own mxfp4 layout; the modules without scales stay float.
        return {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    if not isinstance(q, dict) or "group_size" not in q or "bits" not in q:
        # e.g. a GPTQ/AWQ `quantization_config`: not a format MLX computes with.
        method = q.get("quant_method", "unknown") if isinstance(q, dict) else q
        raise ConfigError(
            f"{config.get('_source', 'config.json')}: unsupported quantization '{method}' "
            "(expected MLX's 'quantization' with 'group_size' and 'bits')"
        )
    return q


def apply_quantization(model: nn.Module, q: dict, weights: dict, checkpoint_name=lambda path: path) -> None:
    """Swap in quantized layers wherever the checkpoint stores quantized tensors.

    Per-layer entries (`"model.layers.0.mlp.down_proj": {"bits": 8, ...}` or `false`), as mlx-lm
    writes them for mixed recipes, override the defaults; they may use our module names or the
    checkpoint's (`checkpoint_name`, e.g. mlx-lm's `switch_mlp` for stacked experts).
    """

    def predicate(path: str, module: nn.Module):
        override = q.get(path, q.get(checkpoint_name(path)))
        if override is False:
            return False
        if not hasattr(module, "to_quantized") or f"{path}.scales" not in weights:
            return False
        return override if isinstance(override, dict) else True

    nn.quantize(
        model,
        group_size=q["group_size"],
        bits=q["bits"],
        mode=q.get("mode", "affine"),
        class_predicate=predicate,
    )


_CONFIG_DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}


def compute_dtype_for(checkpoint_dtype: mx.Dtype) -> mx.Dtype:
    """The dtype to compute in for a checkpoint stored as `checkpoint_dtype`.

    GPUs keep the checkpoint's dtype (half-precision kernels are their fast path). MLX's CPU
    backend is the opposite: its fp16/bf16 kernels are scalar fallbacks, ~40x slower than fp32 for
    a 4-bit matvec, so on the CPU everything floating is computed in float32.
    """
    if backend_name() == "cpu":
        return mx.float32
    return checkpoint_dtype


def checkpoint_dtype(config: dict, weights: dict) -> mx.Dtype:
    """The float dtype a checkpoint is stored in, decided the same way whatever the tensors' order.

    A checkpoint may keep a minority of tensors in another dtype (GGUF files store norms in float32
    beside float16 scales), and a weight dict's order is the file's, or a hash order for GGUF. So:
    the dtype the config declares (`torch_dtype`, transformers 5's `dtype`) when the weights hold it,
    else the dtype holding the most parameters (a tie goes to the narrower, then by name). A declared
    dtype the weights lack is a stale config (e.g. a float32 model converted to 4 bits with float16
    scales).
    """
    counts: dict = {}
    for value in weights.values():
        if mx.issubdtype(value.dtype, mx.floating):
            counts[value.dtype] = counts.get(value.dtype, 0) + value.size
    declared = config.get("torch_dtype") or config.get("dtype")
    declared = _CONFIG_DTYPES.get(declared.removeprefix("torch.")) if isinstance(declared, str) else None
    if declared in counts or (declared is not None and not counts):
        return declared
    if not counts:
        return mx.float32
    return max(counts, key=lambda dtype: (counts[dtype], -dtype.size, str(dtype)))


def assemble(config: dict, weights: dict, origin: dict, where: Path, dtype: mx.Dtype | None = None,
             cpu_weights: str = "auto", prepare=None):
    """Build the family's model from `config`, load `weights` into it, apply the dtype policy and,
    on the CPU backend, the quantized-weights policy (`cpu_weights.py`).

    `prepare(model, sources)` runs once the (still lazy) weights are in place, before anything is
    evaluated: distributed loading cuts each rank's part there (mlxmodels/distributed). `sources`
    maps id() of each checkpoint array to (file, tensor name, the array), so a part can be read from
    its file (holding the array keeps its id from being reused by one `sanitize` made)."""
    model = build_model(config)
    sources = {id(v): (origin.get(k), k, v) for k, v in weights.items()} if prepare is not None else None
    weights = model.sanitize(weights)
    quantization = quantization_settings(config)
    if quantization is not None:
        from mlxmodels.export import mlx_lm_weight_names

        apply_quantization(model, quantization, weights, mlx_lm_weight_names(config))
    check_against_model(model, weights, origin, where)
    model.load_weights(list(weights.items()), strict=True)
    stored_dtype = checkpoint_dtype(config, weights)
    if prepare is not None:
        del weights
        prepare(model, sources)
    compute_dtype = dtype or compute_dtype_for(stored_dtype)
    model.set_dtype(compute_dtype)
    model.eval()
    fp32_needed = fp32_bytes(model)
    policy, extra_bytes = apply_cpu_weight_policy(model, cpu_weights)
    huge_page_bytes = 0
    if policy in ("quantized", "fp32"):  # quantized weights the CPU policy rewrote (see fuse.py)
        fuse_projections(model)
        huge_page_bytes = back_with_huge_pages(leaf for _, leaf in tree_flatten(model.parameters()))
    model.info = ModelInfo(
        path=where,
        config=config,
        model_type=config["model_type"],
        quantization=quantization,
        checkpoint_dtype=str(stored_dtype).removeprefix("mlx.core."),
        compute_dtype=str(compute_dtype).removeprefix("mlx.core."),
        backend=backend_name(),
        # Kimi Linear's config names its context `model_max_length`.
        context_length=int(config.get("max_position_embeddings") or config.get("model_max_length") or 0),
        cpu_weights=policy,
        cpu_weights_bytes=extra_bytes,
        cpu_weights_requested=cpu_weights,
        cpu_weights_fp32_needed=fp32_needed,
        huge_page_bytes=huge_page_bytes,
    )
    return model


def load_model(path, dtype: mx.Dtype | None = None, cpu_weights: str = "auto", prepare=None) -> nn.Module:
    """A model from a local directory (HF or MLX layout) or a `.gguf` file; no tokenizer needed."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(f"{path}: not a model directory or a .gguf file")
        from mlxmodels.gguf import read_gguf

        gguf = read_gguf(path)
        return assemble(gguf.config, gguf.weights, {}, path, dtype, cpu_weights, prepare)
    config = read_config(path)
    weights, origin = read_weights(path)
    return assemble(config, weights, origin, path, dtype, cpu_weights, prepare)
