"""`benchmark(...)`: load (or synthesise) a model, run the tests on Orchard and optionally a
comparison engine, and return the JSON document `orchard bench --json` prints."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from mlx.utils import tree_flatten

from mlxmodels.errors import OrchardError
from mlxmodels.profiling import engines as eng
from mlxmodels.profiling.machine import engine_info, machine_info, memory_bandwidth
from mlxmodels.profiling.roofline import weight_bytes_per_token
from mlxmodels.profiling.runner import add_ratios, prompt_tokens, run_tests
from mlxmodels.profiling.store import data_dir

COMPARE = ("mlx-lm", "llama.cpp")


def parameter_count(model) -> int:
    """The model's logical parameter count: quantized matrices count rows x columns (from their
    scales' shape, whatever their bits), and an LM head tied to the embedding counts once even when
    the CPU policy keeps a separate fp32 copy of it."""
    tied = bool(model.info.config.get("tie_word_embeddings", False))
    total = 0
    for path, module in model.named_modules():
        if tied and path.startswith("lm_head"):
            continue
        own = dict(tree_flatten(module.parameters()))
        own = {k: v for k, v in own.items() if "." not in k}  # this module's arrays, not its children's
        if "scales" in own and hasattr(module, "group_size"):
            total += own["scales"].size * module.group_size + sum(v.size for k, v in own.items()
                                                                   if k not in ("weight", "scales", "biases"))
        else:
            total += sum(v.size for v in own.values())
    return total


def model_record(model, name: str, source: str, load_time: float) -> dict:
    info = model.info
    q = info.quantization
    quant = None
    if q:
        # Checkpoint bits per weight: the packed bits plus one 16-bit scale and bias per group
        # (mlx-lm's layout; the CPU policy may compute from an fp32 copy, see cpu_weights).
        quant = {"bits": q["bits"], "group_size": q["group_size"], "bits_per_weight": q["bits"] + 32 / q["group_size"]}
    return {
        "name": name, "source": source, "model_type": info.model_type, "quantization": quant,
        "parameters": parameter_count(model),
        "checkpoint_dtype": info.checkpoint_dtype, "compute_dtype": info.compute_dtype,
        "cpu_weights": info.cpu_weights, "cpu_weights_bytes": info.cpu_weights_bytes,
        "cpu_weights_note": info.describe_cpu_weights(), "load_time_s": load_time,
        "weight_bytes_per_token": weight_bytes_per_token(model),
    }


def parse_compare(compare) -> list[str]:
    """`--compare` as a list of engine names: "mlx-lm,llama.cpp", a list, or None."""
    if not compare:
        return []
    names = compare.split(",") if isinstance(compare, str) else list(compare)
    out = []
    for name in (n.strip() for n in names):
        if name not in COMPARE:
            raise OrchardError(f"--compare: unknown engine '{name}' (choose from {', '.join(COMPARE)})")
        if name not in out:
            out.append(name)
    return out


def _check_compare(compare: list[str], model_ref, synthetic: str | None) -> None:
    """Refuse an impossible comparison before spending minutes loading a model."""
    if "mlx-lm" in compare:
        import importlib.util

        if importlib.util.find_spec("mlx_lm") is None:
            raise OrchardError("--compare mlx-lm needs the mlx-lm package, which is not installed (pip install mlx-lm)")
        if model_ref is not None and str(model_ref).lower().endswith(".gguf"):
            raise OrchardError(f"--compare mlx-lm: mlx-lm cannot load a .gguf file ({model_ref}); "
                               "convert it or pass the MLX model directory")
    if "llama.cpp" in compare:
        if not eng.llama_cpp_available():
            raise OrchardError("--compare llama.cpp needs llama-cpp-python, which is not installed "
                               "(pip install 'orchard[compare]', or pip install llama-cpp-python)")
        if synthetic:
            raise OrchardError("--compare llama.cpp needs a GGUF model; synthetic models have none")
        _gguf_for(model_ref)


def _tokenizer(path: Path):
    from mlxmodels.tokenizer import load_gguf_tokenizer, load_tokenizer

    if path.is_file():
        from mlxmodels.gguf import read_gguf

        return load_gguf_tokenizer(read_gguf(path).tokenizer_metadata, path)
    return load_tokenizer(Path(path))


def _gguf_for(model_ref) -> Path:
    if model_ref is None:
        from mlxmodels.default_model import default_gguf

        return Path(default_gguf())
    path = Path(str(model_ref)).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        return path
    raise OrchardError(f"--compare llama.cpp: '{model_ref}' is not a .gguf file (llama.cpp runs GGUF models only)")


def benchmark(tests, repetitions: int, model_ref=None, synthetic: str | None = None, bits: int = 4,
              group_size: int = 64, compare: str | list[str] | None = None, baseline_dtype: str = "float32",
              cpu_weights: str = "auto", prefill_step: int = 512, batch: int = 1, layers: int | None = None,
              overrides: dict | None = None, progress: Callable[[str], None] = lambda s: None,
              speculative: Callable | None = None, prompt_file: Path | None = None,
              loader: Callable | None = None) -> dict:
    """`speculative(model, tokenizer)` -> a SpeculativeDecoder: Orchard speculates, and plain Orchard
    runs interleaved as a baseline ("orchard plain"), so the ratios are the speed-up. `prompt_file`:
    the prompt text instead of the shipped one, through the model's chat template. `loader(path)`:
    loads the model instead of `load_model` (a rank's part of it, over several ranks)."""
    if repetitions < 1:
        raise OrchardError(f"-r/--repetitions must be at least 1, got {repetitions}")
    if prefill_step < 1:
        raise OrchardError(f"--prefill-step must be at least 1, got {prefill_step}")
    if batch < 1:
        raise OrchardError(f"--batch must be at least 1, got {batch}")
    compare = parse_compare(compare)
    if batch > 1 and compare:
        raise OrchardError(f"--batch {batch} runs Orchard only; --compare measures single-sequence generation")
    if batch > 1 and speculative is not None:
        raise OrchardError(f"--batch {batch}: speculative decoding is measured on one sequence")
    if synthetic and prompt_file is not None:
        raise OrchardError("--prompt-file needs a model with a tokenizer; --synthetic models have none")
    _check_compare(compare, model_ref, synthetic)
    if synthetic:
        from mlxmodels.profiling.synthetic import preset_config

        preset_config(synthetic, bits, group_size, layers, overrides)  # bad names fail now, not after the bandwidth probe
    elif layers is not None or overrides:
        raise OrchardError("--layers and --override apply to --synthetic models only")
    machine = machine_info()
    bandwidth, source = memory_bandwidth(machine, data_dir() / "bench" / "bandwidth.json")
    machine.update(bandwidth_gbps=bandwidth, bandwidth_source=source)

    t0 = time.perf_counter()
    weights = config = tokenizer = None
    if synthetic:
        from mlxmodels.profiling.synthetic import build_synthetic

        progress(f"building synthetic {synthetic} ({bits}-bit random weights)…")
        model, weights, config = build_synthetic(
            synthetic, bits, group_size, cpu_weights,
            progress=lambda i, n: progress(f"building synthetic {synthetic}: tensor {i}/{n}"), layers=layers,
            overrides=overrides)
        if "mlx-lm" not in compare:
            # Only mlx-lm loads the very same tensors; held otherwise, the ones the CPU policy rewrote
            # (joined projections, fp32 copies) would stay resident beside the model's and count in
            # its memory figures.
            weights = None
        name, source_ref = f"synthetic:{synthetic}", f"synthetic preset {synthetic} (random weights)"
        changes = ([f"first {layers} layers"] if layers is not None else []) + \
            [f"{k}={v}" for k, v in (overrides or {}).items()]
        if changes:
            name += f" ({', '.join(changes)})"
    else:
        import mlx.core as mx

        from mlxmodels.api import load_model
        from mlxmodels.resolve import resolve

        # Resolving may download or convert (the default model's first use): not load time.
        path = resolve(None if model_ref is None else str(model_ref), progress=progress)
        t0 = time.perf_counter()
        model = loader(path) if loader is not None else load_model(path, cpu_weights=cpu_weights)
        mx.eval(model.parameters())  # weights are memory-mapped lazily: count reading them too
        name = Path(model.info.path).name if model_ref is None else str(model_ref)
        source_ref = str(model.info.path)
    load_time = time.perf_counter() - t0
    if not synthetic:
        tokenizer = _tokenizer(path)  # timed apart: its first use imports transformers (seconds)

    longest = max(t.depth + max(t.n_prompt, 1) + t.n_gen for t in tests) + 1
    limit = model.info.context_length
    if limit and longest > limit:
        raise OrchardError(f"the longest test needs {longest} tokens of context; {name} has {limit}")
    vocab = model.info.config.get("vocab_size") or 32000
    needed = max(max(t.n_prompt for t in tests), 1)
    if prompt_file is None:
        prompt = prompt_tokens(tokenizer, vocab, needed, seed=0)
        prompt_name = "synthetic random ids" if tokenizer is None else "assets/bench_prompt.txt"
    else:
        prompt = _file_prompt(prompt_file, tokenizer)
        prompt_name = f"{prompt_file} ({len(prompt)} tokens)"
        if needed > len(prompt):
            raise OrchardError(f"--prompt-file: {prompt_file} is {len(prompt)} tokens with the chat template; "
                               f"the tests ask for {needed}")
    context = prompt_tokens(None, vocab, max(t.depth for t in tests), seed=1)  # depth filler: any tokens do

    decoder = None if speculative is None else speculative(model, tokenizer)
    engines = [eng.OrchardEngine(model, prefill_step, batch, decoder)]
    weight_bytes = [weight_bytes_per_token(model)]
    baseline_models = []
    if decoder is not None:
        engines.append(eng.OrchardEngine(model, prefill_step, batch, name="orchard plain"))
        weight_bytes.append(weight_bytes[0])
        baseline_models.append({"name": name, "weight_bytes_per_token": weight_bytes[0], "load_time_s": 0.0})
    for other_name in compare:
        t1 = time.perf_counter()
        if other_name == "mlx-lm":
            progress("loading the model in mlx-lm…")
            as_f32 = baseline_dtype == "float32"
            if synthetic:
                other = eng.MlxLmEngine.from_weights(config, weights, as_f32, prefill_step)
            else:
                if Path(model.info.path).is_file():
                    raise OrchardError(f"--compare mlx-lm: mlx-lm cannot load a .gguf file ({model.info.path}); "
                                       "convert it or pass the MLX model directory")
                other = eng.MlxLmEngine.load(model.info.path, as_f32, prefill_step)
            record = {"name": name, "weight_bytes_per_token": weight_bytes_per_token(other.model, model.info.config)}
        else:
            progress("loading the model in llama.cpp…")
            gguf = _gguf_for(model_ref)
            other = eng.LlamaCppEngine(gguf, n_ctx=longest + 16, prefill_step=prefill_step)
            record = {"name": gguf.name, "weight_bytes_per_token": gguf.stat().st_size}
        baseline_models.append({**record, "load_time_s": time.perf_counter() - t1})
        engines.append(other)
        weight_bytes.append(record["weight_bytes_per_token"])

    rows = run_tests(engines, tests, repetitions, prompt, context, weight_bytes, bandwidth, progress)
    engine = {**engine_info(), "label": engines[0].label}
    doc = {
        "machine": machine, "engine": engine,
        "model": model_record(model, name, source_ref, load_time),
        "settings": {"repetitions": repetitions, "batch": batch, "warmup": True, "sampling": "greedy",
                     "prefill_step": prefill_step,
                     "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "prompt": prompt_name},
        "results": rows[0],
    }
    if len(engines) > 1:
        doc["baselines"] = [
            {"engine": {"name": other.name, "label": other.label, **_baseline_versions(other.name)},
             "model": record, "results": theirs}
            for other, record, theirs in zip(engines[1:], baseline_models, rows[1:])]
        for other, theirs in zip(engines[1:], rows[1:]):
            add_ratios(doc["results"], theirs, other.name)
    return doc


def _file_prompt(path: Path, tokenizer) -> list[int]:
    """The text of `path` as the prompt's ids: one user message through the chat template, if any."""
    from mlxmodels.generate import encode_prompt
    from mlxmodels.prompt import format_messages, has_chat_template

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise OrchardError(f"--prompt-file: cannot read {path} ({e.strerror or e})") from None
    if has_chat_template(tokenizer):
        text = format_messages(tokenizer, [{"role": "user", "content": text}])
    return encode_prompt(tokenizer, text)


def _baseline_versions(name: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    if name == "orchard plain":
        return {"version": engine_info().get("version")}
    package = {"mlx-lm": "mlx-lm", "llama.cpp": "llama-cpp-python"}[name]
    try:
        return {"version": version(package)}
    except PackageNotFoundError:
        return {"version": None}
