"""The engines a benchmark times: Orchard itself, and mlx-lm / llama.cpp for side-by-side runs.

Each engine runs one test at a time from the same token ids with greedy sampling and reports the
same figures, timed the same way: the clock starts when the prompt is handed to the engine's
generation loop and stops when the loop hands back the first token (TTFT) and the last one.
End-of-sequence tokens are ignored so every run decodes exactly the tokens asked for.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from mlxmodels.errors import OrchardError


@dataclass(frozen=True)
class Test:
    """One benchmark test: prefill `n_prompt` tokens and/or decode `n_gen`, at context `depth`."""

    __test__ = False  # not a pytest test class
    n_prompt: int
    n_gen: int
    depth: int = 0

    @property
    def name(self) -> str:
        parts = ([f"pp{self.n_prompt}"] if self.n_prompt else []) + ([f"tg{self.n_gen}"] if self.n_gen else [])
        return "+".join(parts) + (f" @ d{self.depth}" if self.depth else "")


class RssSampler:
    """Peak resident memory of this process while a run lasts, sampled every 10 ms on a thread.

    Linux reads /proc/self/statm; elsewhere the process's lifetime peak (getrusage) stands in.
    """

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def current() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak if sys.platform == "darwin" else peak * 1024

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def _argmax(logits: mx.array) -> mx.array:
    return mx.argmax(logits, axis=-1)


def _time_loop(tokens, n_gen: int, on_first=None) -> tuple[float, float]:
    """(seconds to the first token, seconds for the next n_gen tokens) from a token iterator.

    `on_first` runs between the two clocks (e.g. to note the cache size when decoding starts)."""
    start = time.perf_counter()
    next(tokens)
    ttft = time.perf_counter() - start
    if on_first is not None:
        on_first()
    first = time.perf_counter()
    for _ in range(n_gen):
        next(tokens)
    return ttft, time.perf_counter() - first


def _sample(test: Test, n_in: int, ttft: float, decode_s: float, ttft_cached: float | None, rss: int,
            mlx_peak: float | None, kv_bytes: int, batch: int = 1) -> dict:
    """One repetition's figures; with a batch, tokens/s count every sequence's tokens."""
    return {
        "ttft_ms": ttft * 1e3,
        "ttft_cached_ms": None if ttft_cached is None else ttft_cached * 1e3,
        "prefill_tps": batch * n_in / ttft if test.n_prompt else None,
        "decode_tps": batch * test.n_gen / decode_s if test.n_gen else None,
        "peak_memory_gb": mlx_peak,
        "peak_rss_gb": rss / 1e9,
        "kv_read_bytes": kv_bytes,
        "batch": batch,
    }


class _KvAverage:
    """Mean KV-cache bytes a decode step reads: the cache grows by one position per step, so the
    mean of its size when decoding starts and when it ends."""

    def __init__(self, cache):
        self.cache, self.first = cache, None

    def start(self) -> None:
        from mlxmodels.profiling.roofline import cache_read_bytes

        self.first = cache_read_bytes(self.cache)

    def end(self) -> int:
        from mlxmodels.profiling.roofline import cache_read_bytes

        last = cache_read_bytes(self.cache)
        return (last + (self.first if self.first is not None else last)) // 2


class OrchardEngine:
    """Orchard's own generation loop (`mlxmodels.generate.generate_tokens`, what stream_generate runs)."""

    def __init__(self, model, prefill_step: int = 512, batch: int = 1, speculative=None, name: str = "orchard"):
        self.model, self.prefill_step, self.batch, self.name = model, prefill_step, batch, name
        self.speculative = speculative  # a SpeculativeDecoder, or None for plain decoding
        self.label = f"orchard ({model.info.compute_dtype}, cpu-weights {model.info.cpu_weights})" \
            if model.info.backend == "cpu" else f"orchard ({model.info.compute_dtype})"
        if batch > 1:
            self.label += f", batch {batch}"
        if speculative is not None:
            self.label += f", speculative: {speculative.proposer.name}, up to {speculative.num_draft} guesses"
        elif name != "orchard":
            self.label += ", plain decoding"

    def _fill(self, cache, ids: list[int]) -> None:
        from mlxmodels.cache import cache_state
        from mlxmodels.generate import prefill

        rest = prefill(self.model, mx.array(ids, dtype=mx.uint32), cache, self.prefill_step)
        self.model(rest[None], cache)
        mx.eval(cache_state(cache))

    def _batched_tokens(self, ids: list[int], cache):
        """Greedy decode of `batch` copies of the prompt at once, pipelined like generate_tokens:
        yields after each step with the next one already queued."""
        from mlxmodels.cache import cache_state

        rows = mx.array([ids] * self.batch, dtype=mx.uint32)
        for start in range(0, len(ids) - 1, self.prefill_step):
            self.model(rows[:, start : min(start + self.prefill_step, len(ids) - 1)], cache)
            mx.eval(cache_state(cache))

        def step(inputs):
            return mx.argmax(self.model(inputs, cache)[:, -1, :], axis=-1)[:, None]

        token = step(rows[:, -1:])
        mx.async_eval(token)
        while True:
            following = step(token)
            mx.async_eval(following)
            token.tolist()
            yield
            token = following

    def run(self, test: Test, prompt: list[int], context: list[int]) -> dict:
        from metal_kernels.quantized import calls

        before = calls.copy()
        sample = self._run(test, prompt, context)
        # Which implementation multiplied the quantized weights (metal_kernels/quantized.py), how often.
        sample["quantized_matmul"] = dict(calls - before)
        return sample

    def _run(self, test: Test, prompt: list[int], context: list[int]) -> dict:
        from mlxmodels.cache import cache_footprint, trim_cache
        from mlxmodels.generate import generate_tokens

        if self.batch > 1:
            return self._run_batched(test, prompt, context)
        cache = self.model.make_cache()
        if test.depth:
            self._fill(cache, context[: test.depth])
        ids = prompt[: max(test.n_prompt, 1)]
        mx.reset_peak_memory()
        with RssSampler() as rss:
            if self.speculative is None:
                tokens = generate_tokens(self.model, mx.array(ids, dtype=mx.uint32), cache, _argmax, [],
                                         self.prefill_step)
            else:
                from mlxmodels.generate import GenerationStats
                from mlxmodels.sampling import SamplingParams

                self.speculative.proposer.forget()  # every repetition starts cold, as the target does
                stats = GenerationStats()
                tokens = self.speculative.tokens(self.model, ids, cache, SamplingParams(temperature=0.0), [], stats,
                                                 prefill_step=self.prefill_step)
            kv = _KvAverage(cache)
            ttft, decode_s = _time_loop(tokens, test.n_gen, kv.start)
            tokens.close()
            kv = kv.end()
            footprint = cache_footprint(cache)
            cached = None
            if test.n_prompt:
                # The chat case: everything but the prompt's last token is already in the cache.
                keep = test.depth + len(ids) - 1
                from mlxmodels.cache import cache_offset

                if trim_cache(cache, cache_offset(cache) - keep):
                    again = generate_tokens(self.model, mx.array(ids[-1:], dtype=mx.uint32), cache, _argmax, [])
                    cached, _ = _time_loop(again, 0)
                    again.close()
        sample = {**_sample(test, len(ids), ttft, decode_s, cached, rss.peak, mx.get_peak_memory() / 1e9, kv),
                  "cache_bytes": footprint}
        if self.speculative is not None and test.n_gen:
            # The first token and the n_gen after it, over the target passes that decided them.
            sample.update(acceptance=stats.acceptance_rate if stats.draft_tokens else None,
                          tokens_per_pass=(test.n_gen + 1) / stats.target_passes)
        return sample


    def _run_batched(self, test: Test, prompt: list[int], context: list[int]) -> dict:

        cache = self.model.make_cache()
        if test.depth:
            filler = context[: test.depth]
            for start in range(0, len(filler), self.prefill_step):
                self.model(mx.array([filler[start : start + self.prefill_step]] * self.batch, dtype=mx.uint32), cache)
                mx.eval([a for layer in cache for a in layer.state])
        ids = prompt[: max(test.n_prompt, 1)]
        mx.reset_peak_memory()
        with RssSampler() as rss:
            tokens = self._batched_tokens(ids, cache)
            kv = _KvAverage(cache)
            ttft, decode_s = _time_loop(tokens, test.n_gen, kv.start)
            tokens.close()
            kv = kv.end()  # every row's KV: the runner divides the step's bytes by the batch
        return _sample(test, len(ids), ttft, decode_s, None, rss.peak, mx.get_peak_memory() / 1e9, kv, self.batch)


class MlxLmEngine:
    """mlx-lm's generation loop (`mlx_lm.generate.generate_step`, the loop inside its stream_generate)."""

    name = "mlx-lm"

    def __init__(self, model, label: str, prefill_step: int = 512):
        self.model, self.label, self.prefill_step = model, label, prefill_step

    @classmethod
    def load(cls, path: Path, as_float32: bool, prefill_step: int = 512):
        from mlx_lm.utils import load_model

        try:
            model, _ = load_model(Path(path))
        except Exception as e:  # mlx-lm's own loader errors are not ours to classify
            raise OrchardError(f"--compare mlx-lm: mlx-lm cannot load {path}: {str(e).splitlines()[0]}") from None
        return cls._finish(model, as_float32, prefill_step)

    @classmethod
    def from_weights(cls, config: dict, weights: dict, as_float32: bool, prefill_step: int = 512):
        """The same synthetic tensors in mlx-lm's module for the family."""
        import mlx.nn as nn
        from mlx_lm.utils import _get_classes

        try:
            model_class, args_class = _get_classes(config)
        except Exception as e:
            raise OrchardError(f"--compare mlx-lm: mlx-lm has no '{config['model_type']}' model: {e}") from None
        model = model_class(args_class.from_dict({k: v for k, v in config.items() if not k.startswith("_")}))
        q = config.get("quantization")
        if q:
            nn.quantize(model, q["group_size"], q["bits"], class_predicate=lambda p, m: f"{p}.scales" in weights)
        try:
            model.load_weights(list(model.sanitize(dict(weights)).items()) if hasattr(model, "sanitize")
                               else list(weights.items()), strict=True)
        except ValueError as e:
            raise OrchardError(f"--compare mlx-lm: mlx-lm names this family's weights differently ({e})") from None
        return cls._finish(model, as_float32, prefill_step)

    @classmethod
    def _finish(cls, model, as_float32: bool, prefill_step: int):
        from metal_kernels import backend_name

        model.eval()
        if as_float32 and backend_name() == "cpu":
            # Orchard's CPU policy: float32 activations and scales (MLX's CPU fp16 kernels are
            # scalar loops); without this the comparison would measure the dtype, not the engine.
            model.set_dtype(mx.float32)
            label = "mlx-lm (float32, as Orchard computes on the CPU)"
        else:
            label = "mlx-lm (as installed: checkpoint dtype)"
        mx.eval(model.parameters())
        return cls(model, label, prefill_step)

    def run(self, test: Test, prompt: list[int], context: list[int]) -> dict:
        from mlx_lm.generate import generate_step
        from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache


        cache = make_prompt_cache(self.model)
        if test.depth:
            ids = context[: test.depth]
            for start in range(0, len(ids), self.prefill_step):
                self.model(mx.array(ids[start : start + self.prefill_step])[None], cache=cache)
                mx.eval([c.state for c in cache])
        ids = prompt[: max(test.n_prompt, 1)]
        mx.reset_peak_memory()
        with RssSampler() as rss:
            tokens = generate_step(mx.array(ids, dtype=mx.uint32), self.model, max_tokens=test.n_gen + 1,
                                   sampler=_argmax, prompt_cache=cache, prefill_step_size=self.prefill_step)
            kv = _KvAverage(cache)
            ttft, decode_s = _time_loop(tokens, test.n_gen, kv.start)
            tokens.close()
            kv = kv.end()
            cached = None
            if test.n_prompt:
                extra = cache[0].offset - (test.depth + len(ids) - 1)
                if trim_prompt_cache(cache, extra) == extra:
                    again = generate_step(mx.array(ids[-1:], dtype=mx.uint32), self.model, max_tokens=1,
                                          sampler=_argmax, prompt_cache=cache)
                    cached, _ = _time_loop(again, 0)
                    again.close()
        return _sample(test, len(ids), ttft, decode_s, cached, rss.peak, mx.get_peak_memory() / 1e9, kv)


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppEngine:
    """llama.cpp through llama-cpp-python, on the GGUF file the model came from (its own threads, CPU)."""

    name = "llama.cpp"

    def __init__(self, gguf: Path, n_ctx: int, prefill_step: int = 512):
        if not llama_cpp_available():
            raise OrchardError("--compare llama.cpp needs llama-cpp-python, which is not installed "
                               "(pip install llama-cpp-python)")
        from llama_cpp import Llama, __version__

        # llama-cpp-python decodes on half the logical CPUs by default; give it every core, as
        # MLX and its BLAS have, so the comparison is engine against engine, not 1 thread against 2.
        threads = os.cpu_count() or 1
        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=prefill_step, n_ubatch=prefill_step,
                         n_threads=threads, n_threads_batch=threads, verbose=False)
        self.label = f"llama.cpp (llama-cpp-python {__version__}, {Path(gguf).name}, {threads} threads)"

    def run(self, test: Test, prompt: list[int], context: list[int]) -> dict:
        llm = self.llm
        llm.reset()
        if test.depth:
            llm.eval(context[: test.depth])
        ids = prompt[: max(test.n_prompt, 1)]

        def tokens(seq):
            # generate() with reset=False continues from what is already evaluated (the depth).
            yield from llm.generate(seq, top_k=1, temp=0.0, reset=False)

        with RssSampler() as rss:
            ttft, decode_s = _time_loop(tokens(ids), test.n_gen)
            cached = None
            if test.n_prompt:
                llm.n_tokens = test.depth + len(ids) - 1  # rewind to just before the prompt's last token
                cached, _ = _time_loop(tokens(ids[-1:]), 0)
        return _sample(test, len(ids), ttft, decode_s, cached, rss.peak, None, 0)
