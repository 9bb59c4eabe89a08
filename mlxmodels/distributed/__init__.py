"""Models split over several processes or machines with MLX's `mx.distributed` (docs/distributed.md).

    group = distributed.init()            # None unless started by mlx.launch / `orchard --ranks N`
    model, tokenizer = distributed.load(ref, group, "tensor")   # or "pipeline"

Each rank reads only its part of the weights; the model's forward pass then returns the full
logits on every rank, so every rank runs the same generation loop and picks the same tokens.
"""

from __future__ import annotations

import mlx.core as mx

from mlxmodels.distributed.group import PARALLEL_MODES, Group, available_memory, check_mode, init, launched
from mlxmodels.distributed.model import Distributed, Traffic, attach, measure_traffic
from mlxmodels.distributed.pipeline import PipelinePlan
from mlxmodels.distributed.slicing import Reader, materialize_rest
from mlxmodels.distributed.tensor import TensorPlan

__all__ = ["PARALLEL_MODES", "Group", "init", "launched", "load", "load_model", "measure_traffic", "check_mode"]


def _plan(group: Group, parallel: str, traffic: Traffic):
    check_mode(parallel)
    if parallel == "tensor":
        return TensorPlan(group, traffic)
    # Every rank's available memory, gathered before loading (a collective: all ranks call it).
    return PipelinePlan(group, group.gather_floats(available_memory() / 1e9), traffic)


def _prepare(plan, stats: dict):
    def prepare(model, sources):
        reader = Reader(sources)
        plan.split(model, reader)
        materialize_rest(model, reader)
        reader.release()
        stats["weight_bytes_read"] = reader.bytes_read
        stats["active_after_split"] = mx.get_active_memory()
        stats["peak_after_split"] = mx.get_peak_memory()

    return prepare


def _finish(model, group: Group, plan, parallel: str, traffic: Traffic, stats: dict):
    plan.install(model)
    dist = Distributed(group, plan, parallel, traffic)
    dist.load_stats = stats
    return attach(model, dist)


def load(reference, group: Group, parallel: str, dtype=None, progress=None, cpu_weights: str = "auto"):
    """(model, tokenizer) with this rank's part of the model (see mlxmodels.api.load)."""
    from mlxmodels.api import load as load_whole

    traffic = Traffic()
    plan = _plan(group, parallel, traffic)
    stats: dict = {}
    model, tokenizer = load_whole(reference, dtype, progress, cpu_weights, prepare=_prepare(plan, stats))
    return _finish(model, group, plan, parallel, traffic, stats), tokenizer


def load_model(path, group: Group, parallel: str, dtype=None, cpu_weights: str = "auto"):
    """The model alone, from a local directory or .gguf file (see mlxmodels.loading.load_model)."""
    from mlxmodels.loading import load_model as load_path

    traffic = Traffic()
    plan = _plan(group, parallel, traffic)
    stats: dict = {}
    model = load_path(path, dtype, cpu_weights, prepare=_prepare(plan, stats))
    return _finish(model, group, plan, parallel, traffic, stats)
