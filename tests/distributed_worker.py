"""One rank of tests/test_distributed.py's job (started by mlx.launch): loads each model split over
the ranks, in each mode, and rank 0 writes what it computed to an .npz for the test to compare.

    mlx.launch -n 2 --backend ring python tests/distributed_worker.py OUT.npz MODEL_DIR...
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import mlxmodels  # noqa: F401  (first: BLAS selection, as in the app)
import mlx.core as mx
import numpy as np

from mlxmodels import distributed
from mlxmodels.generate import generate_tokens
from mlxmodels.sampling import SamplingParams, make_sampler

GREEDY_TOKENS = 8


def prompt_ids(model_dir: Path) -> np.ndarray:
    reference = model_dir / "reference.npz"
    if reference.is_file():
        return np.load(reference)["input_ids"]
    # A real model: any ids will do; 70 tokens, so a pipeline prefill is cut into micro-batches.
    return (np.arange(70, dtype=np.int32) * 37 % 2000 + 100)[None]


def greedy(model, ids: np.ndarray) -> list[int]:
    """Greedy continuation through the engine's own loop: chunked prefill, cache, pipelined decode."""
    tokens = generate_tokens(model, mx.array(ids[0]), model.make_cache(), make_sampler(SamplingParams(temperature=0.0)), [])
    return [next(tokens) for _ in range(GREEDY_TOKENS)]


def measured(load):
    """(model, [bytes held after loading, peak bytes while loading], memory in use before)."""
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    model = load()
    mx.eval(model.parameters())  # a whole model's weights stay lazy until first used
    return model, [mx.get_active_memory() - base, mx.get_peak_memory() - base], base


def main(out: str, dirs: list[str]) -> None:
    group = distributed.init()
    results = {}
    for d in map(Path, dirs):
        ids = prompt_ids(d)
        _, single, _ = measured(lambda: mlxmodels.load_model(d))
        results[f"{d.name}/single/memory"] = np.array(single + [single[1]])
        for mode in distributed.PARALLEL_MODES:
            model, memory, base = measured(lambda: distributed.load_model(d, group, mode))
            # The peak when this rank's parts were cut and read, before the CPU backend's weight
            # policy re-lays them out (its transients are the same with or without distribution).
            memory.append(model.distributed.load_stats["peak_after_split"] - base)
            key = f"{d.name}/{mode}"
            results[f"{key}/logits"] = np.array(model(mx.array(ids)))
            results[f"{key}/greedy"] = np.array(greedy(model, ids))
            # [rank, (held after loading, peak while loading, peak while cutting)]
            results[f"{key}/memory"] = np.array(
                mx.distributed.all_gather(mx.array([memory], dtype=mx.float32), group=group.group))
            del model
    if group.is_leader:
        np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
