"""Rendering benchmark documents: Markdown (default), CSV, and cross-run comparison reports with a
terminal bar plot (and a PNG chart)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mlxmodels.profiling.runner import FIGURES

FIGURE_LABELS = {"ttft_ms": "TTFT ms", "ttft_cached_ms": "TTFT cached ms", "prefill_tps": "prefill t/s",
                 "decode_tps": "decode t/s"}
METRICS = ("decode_tps", "prefill_tps", "ttft_ms", "ttft_cached_ms")
KERNEL_LABELS = {"native": "native", "dequantize": "dequantize + GEMM", "mlx": "MLX quantized_matmul"}


def fmt_stat(stat: dict | None, digits: int = 1) -> str:
    if not stat:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _fmt(x, digits=2, suffix="") -> str:
    return "–" if x is None else f"{x:.{digits}f}{suffix}"


def _roof(row: dict) -> str:
    r = row.get("roofline")
    if not r or r.get("achieved_gbps") is None:
        return "–"
    pct = r.get("percent_of_bandwidth")
    return f"{r['achieved_gbps']:.1f}" + (f" ({pct:.0f}%)" if pct is not None else "")


def _cache(row: dict) -> str:
    footprint = row.get("cache_bytes")
    if not footprint:
        return ""
    return f"{footprint['attention'] / 1e6:.1f} + {footprint['state'] / 1e6:.2f}"


def describe_model(model: dict) -> str:
    q = model.get("quantization")
    quant = f"{q['bits']}-bit g{q['group_size']}, {q['bits_per_weight']:.2f} bpw" if q else "unquantized"
    return f"{model['name']} ({model.get('model_type')}, {quant}, computes {model.get('compute_dtype')})"


def baselines(doc: dict) -> list[dict]:
    """The comparison engines' runs of a document, oldest format included: records stored before
    several baselines were allowed hold one `baseline` and one `ratio` per row."""
    if "baselines" in doc:
        return doc["baselines"]
    return [doc["baseline"]] if "baseline" in doc else []


def ratios(row: dict, engine: str) -> dict:
    if "ratios" in row:
        return row["ratios"][engine]
    return row["ratio"]


def markdown(doc: dict) -> str:
    m, e, model = doc["machine"], doc["engine"], doc["model"]
    bw = m.get("bandwidth_gbps")
    lines = [
        f"**machine** {m.get('chip')} · {m.get('cpu_cores')} cores · {m.get('memory_gb')} GB · {m.get('os')} · "
        f"{m.get('backend')} backend · memory bandwidth "
        + (f"{bw:.1f} GB/s ({m.get('bandwidth_source')})" if bw else "unknown"),
        f"**model** {describe_model(model)} · loaded in {model['load_time_s']:.2f} s · "
        f"{model['weight_bytes_per_token'] / 1e6:.1f} MB of weights read per token"
        + (f" · CPU: {model['cpu_weights_note']}" if model.get("cpu_weights_note") else ""),
        f"**engine** {e['label']} · mlx {e.get('mlx')} · commit {e.get('commit')} · greedy, "
        f"{doc['settings']['repetitions']} repetitions after a warm-up",
    ]
    others = baselines(doc)
    for b in others:
        lines.append(f"**baseline** {b['engine']['label']} · runs interleaved with Orchard's")
    lines.append("")
    header = ["test", "engine", *FIGURE_LABELS.values(), "peak MLX GB", "peak RSS GB", "decode GB/s (% of bw)",
              "cache MB (attention + state)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    digits = {"ttft_ms": 1, "ttft_cached_ms": 1, "prefill_tps": 1, "decode_tps": 1}
    for i, row in enumerate(doc["results"]):
        engines = [("orchard", row)] + [(b["engine"]["name"], b["results"][i]) for b in others]
        for name, r in engines:
            cells = [r["test"], name, *(fmt_stat(r[f], digits[f]) for f in FIGURES),
                     _fmt(r["peak_memory_gb"]), _fmt(r["peak_rss_gb"]), _roof(r), _cache(r)]
            lines.append("| " + " | ".join(cells) + " |")
        for b in others:
            name = b["engine"]["name"]
            ratio = ratios(row, name)
            cells = [row["test"], f"**orchard / {name}**", *(_fmt(ratio[f], 2, "x") for f in FIGURES), "", "", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
    if others:
        lines.append("")
        lines.append("Ratios: below 1x is better for TTFT, above 1x is better for tokens/s. With several "
                     "engines, repetitions rotate through them (A B C A B C …).")
    for row in doc["results"]:
        if row.get("tokens_per_pass"):
            guessed = (f"{fmt_stat(row['acceptance'], 2)} of the guesses accepted" if row["acceptance"]
                       else "nothing guessed")
            lines.append(f"\nSpeculative decoding, {row['test']}: {guessed}, {fmt_stat(row['tokens_per_pass'], 2)} "
                         "tokens per model pass.")
    used = [(row["test"], row["quantized_matmul"]) for row in doc["results"] if row.get("quantized_matmul")]
    if used:
        lines.append("\nQuantized matmuls per run, by implementation (native: Orchard's CPU kernel): "
                     + " · ".join(f"{test}: " + ", ".join(f"{KERNEL_LABELS.get(k, k)} {n:,}" for k, n in sorted(c.items()))
                                  for test, c in used) + ".")
    return "\n".join(lines) + "\n"


def _flat_rows(doc: dict):
    runs = [("orchard", doc["engine"], doc["results"])]
    runs += [(b["engine"]["name"], b["engine"], b["results"]) for b in baselines(doc)]
    for name, engine, results in runs:
        for r in results:
            yield name, engine, r


def to_csv(doc: dict) -> str:
    """One line per engine and test; each figure as mean/std/min/max columns."""
    out = io.StringIO()
    w = csv.writer(out)
    stat_cols = [f"{f}_{k}" for f in FIGURES for k in ("mean", "std", "min", "max")]
    w.writerow(["chip", "backend", "model", "engine", "test", "n_prompt", "n_gen", "depth", *stat_cols,
                "peak_memory_gb", "peak_rss_gb", "achieved_gbps", "percent_of_bandwidth", "repetitions"])
    for name, engine, r in _flat_rows(doc):
        stats = [("" if r[f] is None else r[f][k]) for f in FIGURES for k in ("mean", "std", "min", "max")]
        roof = r.get("roofline") or {}
        w.writerow([doc["machine"].get("chip"), doc["machine"].get("backend"), doc["model"]["name"], name,
                    r["test"], r["n_prompt"], r["n_gen"], r["depth"], *stats,
                    "" if r["peak_memory_gb"] is None else r["peak_memory_gb"], r["peak_rss_gb"],
                    "" if roof.get("achieved_gbps") is None else roof["achieved_gbps"],
                    "" if roof.get("percent_of_bandwidth") is None else roof["percent_of_bandwidth"],
                    len(r["samples"])])
    return out.getvalue()


# --- comparing runs ---------------------------------------------------------------------------

def comparison_rows(records: list[dict], metric: str) -> list[dict]:
    """One entry per (run, engine, test) that measured `metric`."""
    rows = []
    for rec in records:
        for name, engine, r in _flat_rows(rec):
            stat = r.get(metric)
            if not stat:
                continue
            rows.append({"chip": rec["machine"].get("chip") or "?", "backend": rec["machine"].get("backend"),
                         "model": rec["model"]["name"], "engine": name, "stat": stat,
                         "test": r["test"] + (f" b{r['batch']}" if r.get("batch", 1) > 1 else ""),
                         "when": rec.get("settings", {}).get("timestamp", "")})
    return rows


def comparison_table(rows: list[dict], metric: str) -> str:
    header = ["chip", "backend", "model", "engine", "test", FIGURE_LABELS[metric], "min", "max", "when"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        s = r["stat"]
        lines.append("| " + " | ".join([r["chip"], str(r["backend"]), r["model"], r["engine"], r["test"],
                                        fmt_stat(s), f"{s['min']:.1f}", f"{s['max']:.1f}", r["when"]]) + " |")
    return "\n".join(lines) + "\n"


def _bar_label(r: dict, rows: list[dict]) -> str:
    """Only the fields that differ between rows, so labels stay short."""
    keys = [k for k in ("chip", "model", "engine", "test") if len({x[k] for x in rows}) > 1]
    if len({tuple(x[k] for k in keys) for x in rows}) < len(rows):
        keys.append("when")  # repeated runs of the same thing: tell them apart by time
    return " · ".join(str(r[k]) for k in keys) or r["test"]


def terminal_plot(rows: list[dict], metric: str, width: int = 40) -> str:
    """Horizontal bars with eighth-block resolution, longest bar = the best (or largest) value."""
    if not rows:
        return ""
    labels = [_bar_label(r, rows) for r in rows]
    pad = max(len(lbl) for lbl in labels)
    vmax = max(r["stat"]["mean"] for r in rows) or 1.0
    blocks = " ▏▎▍▌▋▊▉█"
    lines = [f"{FIGURE_LABELS[metric]} (mean)"]
    for label, r in zip(labels, rows):
        eighths = int(round(width * 8 * r["stat"]["mean"] / vmax))
        bar = "█" * (eighths // 8) + (blocks[eighths % 8] if eighths % 8 else "")
        lines.append(f"{label.ljust(pad)} │{bar} {r['stat']['mean']:.1f}")
    return "\n".join(lines) + "\n"


def png_chart(rows: list[dict], metric: str, path: Path) -> None:
    from mlxmodels.profiling.png import bar_chart, write_png

    engines = sorted({r["engine"] for r in rows})
    bars = [(_bar_label(r, rows), r["stat"]["mean"], engines.index(r["engine"])) for r in rows]
    unit = "ms" if metric.startswith("ttft") else "t/s"
    write_png(path, bar_chart(f"orchard bench: {FIGURE_LABELS[metric]}", bars, unit, legend=engines))
