"""Per-rank facts for `orchard bench --ranks N`: weights held, peak memory, communication per token.

Communication is timed by replaying one decode step's traffic (the shapes its forward pass sent,
recorded as the graph was built) on the same group, with nothing else running: MLX evaluates
communication inside the same lazy graph as the arithmetic, so it cannot be timed apart in place.
Every rank must call `rank_report` at the same point (it runs collectives).
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten

from mlxmodels.distributed.model import measure_traffic


def rank_report(model) -> dict:
    dist = model.distributed
    weight_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    peak = mx.get_peak_memory()
    cache = model.make_cache()
    mx.eval(model(mx.array([[1, 2, 3, 4]]), cache))
    mx.eval(model(mx.array([[5]]), cache))  # one decode step: its traffic is what gets replayed
    step_bytes = dist.traffic.nbytes
    seconds = measure_traffic(dist)
    mine = mx.array([[weight_bytes, peak, seconds, step_bytes, dist.load_stats.get("peak_after_split", 0)]],
                    dtype=mx.float32)
    rows = mx.distributed.all_gather(mine, group=dist.group.group).tolist()
    report = {"ranks": dist.group.size, "parallel": dist.parallel, "per_rank": [
        {"rank": r, "weight_bytes": int(w), "peak_memory_bytes": int(p), "comm_ms_per_token": s * 1e3,
         "comm_bytes_per_token": int(b), "load_peak_bytes": int(lp)}
        for r, (w, p, s, b, lp) in enumerate(rows)]}
    if dist.parallel == "pipeline":
        report["layers"] = [list(r) for r in dist.plan.ranges]
    report["notes"] = list(dist.plan.notes)
    return report


def format_report(report: dict, decode_tps: float | None = None) -> str:
    """Lines for the terminal: one per rank, with communication's share of a decode step."""
    lines = [f"distributed: {report['ranks']} ranks, {report['parallel']} parallel"
             + (f" (layers {', '.join(f'{a}-{b - 1}' for a, b in report['layers'])})" if "layers" in report else "")]
    for row in report["per_rank"]:
        share = (f" ({row['comm_ms_per_token'] * decode_tps / 10:.0f}% of a decode step)"
                 if decode_tps else "")
        lines.append(f"  rank {row['rank']}: weights {row['weight_bytes'] / 1e9:.3f} GB, peak memory "
                     f"{row['peak_memory_bytes'] / 1e9:.3f} GB, communication {row['comm_ms_per_token']:.2f} ms "
                     f"and {row['comm_bytes_per_token'] / 1e3:.1f} KB per decoded token{share}")
    lines += [f"  note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines) + "\n"
