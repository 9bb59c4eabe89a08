"""Writing an MLX model directory (config.json, safetensors shards + index, tokenizer files).

The directory is written under a temporary name beside its destination and renamed into place at
the end, so an interrupted write never leaves a half model where a model is expected. A process
killed outright (SIGKILL, power loss) cannot clean up its temporary directory; the next write to the
same destination removes such leftovers (`remove_stale_partials`).

Configs are written in the dialect mlx-lm reads (`mlx_lm_config`): mlx-lm 0.32 ignores
transformers 5's `rope_parameters`, so RoPE settings go back to the top-level `rope_theta` /
`rope_scaling` (and Gemma's `rope_local_base_freq`), which Orchard reads as well.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx

MAX_SHARD_BYTES = 5 * 1024**3


def _partial_name(out: Path, pid: int) -> Path:
    return out.parent / f".{out.name}.partial-{pid}"


def remove_stale_partials(out: Path) -> None:
    """Delete temporary directories of earlier writes to `out` whose process no longer runs."""
    out = Path(out)
    if not out.parent.is_dir():
        return
    for tmp in out.parent.glob(f".{out.name}.partial-*"):
        try:
            pid = int(tmp.name.rpartition("-")[2])
            os.kill(pid, 0)
            if pid != os.getpid():
                continue  # a live writer: leave it alone
        except ValueError:
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # someone else's live process
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_directory(out: Path, overwrite: bool = False):
    """Yield a temporary directory that becomes `out` when the block finishes without error."""
    out = Path(out)
    tmp = _partial_name(out, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            if not overwrite:
                raise FileExistsError(f"{out}: already exists")
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def shard(weights: dict, max_bytes: int = MAX_SHARD_BYTES) -> list[dict]:
    shards, current, size = [], {}, 0
    for name, value in weights.items():
        if current and size + value.nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = value
        size += value.nbytes
    shards.append(current)
    return shards


def write_weights(directory: Path, weights: dict, max_bytes: int = MAX_SHARD_BYTES) -> None:
    shards = shard(weights, max_bytes)
    if len(shards) == 1:
        mx.save_safetensors(str(directory / "model.safetensors"), shards[0], metadata={"format": "mlx"})
        return
    weight_map = {}
    for i, part in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(directory / name), part, metadata={"format": "mlx"})
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def public_config(config: dict) -> dict:
    """The config as written to disk: our private bookkeeping keys (leading underscore) removed."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def mlx_lm_weight_names(config: dict):
    """A function mapping our tensor (and module) names to the ones mlx-lm reads for this family.

    Identity for most families; the MoE families store stacked experts where mlx-lm expects them
    (their `sanitize` reads both, so Orchard loads either)."""
    from mlxmodels.models import family_module

    family = family_module(config)
    renames = getattr(family, "mlx_lm_renames", lambda _: ())(config["model_type"])
    # (ours, theirs) name starts, e.g. multi-token-prediction blocks stored after the decoder layers.
    prefixes = getattr(family, "mlx_lm_prefixes", lambda _: ())(config)

    def rename(name: str) -> str:
        for ours, theirs in prefixes:
            if name.startswith(ours):
                name = theirs + name[len(ours):]
        for ours, theirs in renames:
            name = name.replace(ours, theirs)
        return name

    return rename


def mlx_lm_config(config: dict) -> dict:
    """`public_config` with RoPE settings in the top-level (transformers 4.x) dialect, as mlx-lm reads them."""
    from mlxmodels.config import rope_parameters

    config = public_config(config)
    # Fields mlx-lm's model classes require under their 4.x names.
    if config.get("model_type") == "qwen3_moe" and "num_experts" not in config and "num_local_experts" in config:
        config["num_experts"] = config["num_local_experts"]
    if config.get("model_type") == "mamba2" and "intermediate_size" not in config:
        config["intermediate_size"] = int(config.get("expand", 2) * config["hidden_size"])
    if config.get("model_type") == "nemotron_h":
        # transformers floors dt at time_step_min and ignores time_step_limit; mlx-lm clamps dt to
        # time_step_limit only. Writing the floor there makes mlx-lm compute what transformers does.
        floor = config.get("time_step_min", config.get("mamba_dt_min", 0.001))
        config["time_step_limit"] = [float(floor), float("inf")]
    if config.get("model_type") == "lfm2" and "block_dim" not in config:
        config["block_dim"] = config["hidden_size"]  # mlx-lm sizes LFM2's MLP input by it
    if config.get("model_type") == "kimi_linear":
        from mlxmodels.models import kimi_linear

        config = kimi_linear.mlx_lm_config(config)  # its layer lists and MoE fields in the original spelling
    if config.get("model_type") == "granitemoehybrid":
        from mlxmodels.models import granitemoehybrid

        config = granitemoehybrid.mlx_lm_config(config)  # its layer kinds in the 4.x spelling
    if config.get("model_type") in ("qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text"):
        from mlxmodels.models import qwen3_next

        config = qwen3_next.mlx_lm_config(config)  # layer pattern, partial rotary, Qwen3.5's text_config
    if config.get("model_type") == "phi3":
        from mlxmodels.models import phi3

        config = phi3.mlx_lm_config(config)  # partial rotary at the top level, LongRoPE's "type"
    if config.get("model_type") == "deepseek_v2":
        from mlxmodels.models import deepseek_v2

        config = deepseek_v2.mlx_lm_config(config)  # plain RoPE as YaRN by a factor of 1
    if config.get("model_type") == "glm4_moe":
        from mlxmodels.models import glm4_moe

        config = glm4_moe.mlx_lm_config(config)  # head_dim, partial rotary and MoE fields at the top level
    if config.get("model_type") in ("llama4_text", "llama4"):
        from mlxmodels.models import llama4_text

        config = llama4_text.mlx_lm_config(config)  # the multimodal "llama4" layout mlx-lm reads
    params = config.pop("rope_parameters", None)
    if not isinstance(params, dict):
        return config
    nested = any(isinstance(v, dict) for v in params.values())
    full = rope_parameters({"rope_parameters": params}, "full_attention" if nested else None)
    config["rope_theta"] = full.pop("rope_theta")
    if full.get("rope_type", "default") != "default":
        config["rope_scaling"] = full
    else:
        config.pop("rope_scaling", None)
    if nested and isinstance(params.get("sliding_attention"), dict):
        config["rope_local_base_freq"] = float(params["sliding_attention"].get("rope_theta", 10000.0))
        types = config.get("layer_types")
        if types and "full_attention" in types and "sliding_window_pattern" not in config:
            # mlx-lm's Gemma 3 derives its layer types from this period instead of `layer_types`.
            config["sliding_window_pattern"] = types.index("full_attention") + 1
    return config


def save_model_dir(out: Path, config: dict, weights: dict, hf_tokenizer=None, overwrite: bool = False) -> Path:
    with atomic_directory(out, overwrite) as tmp:
        write_weights(tmp, weights)
        (tmp / "config.json").write_text(json.dumps(public_config(config), indent=2))
        if hf_tokenizer is not None:
            hf_tokenizer.save_pretrained(str(tmp))
    return Path(out)
