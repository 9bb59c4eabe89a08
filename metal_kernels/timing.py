"""Time each custom GPU kernel against MLX's built-in path on decode-sized shapes, and check they agree.

    python -m metal_kernels.timing [--json PATH] [--dtype float16|bfloat16|float32] [--trials N]

Runs on a GPU backend (Metal or CUDA), where `ORCHARD_KERNELS=custom` and `builtin` pick the two
paths of every public function in `metal_kernels.ops`. Each case evaluates a batch of independent
calls per `mx.eval` (each its own x or q; the weights or the cache alternate between two copies),
which amortizes the per-eval overhead the way a decode step's single graph does, and reports the
best of several trials. Results feed the
`auto` choices in ops.py and the table in docs/gpu.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import mlx.core as mx

from metal_kernels import ops
from metal_kernels.backend import backend_name, environment_set

DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}


@dataclass
class Result:
    case: str
    builtin_us: float
    custom_us: float
    max_rel_diff: float  # max |custom - builtin| / max |builtin|

    @property
    def speedup(self) -> float:
        return self.builtin_us / self.custom_us


@dataclass
class Case:
    name: str
    make_inputs: Callable[[int], tuple]  # seed -> arguments of `call`
    call: Callable[..., mx.array]


def _quantize(a, bits, group_size, dtype):
    """(packed, scales, biases) with scales and biases in the compute dtype, as a model holds them."""
    return tuple(p if p.dtype == mx.uint32 else p.astype(dtype) for p in mx.quantize(a, group_size=group_size, bits=bits))


def _quantized(shape, bits, group_size, dtype, seed):
    return _quantize(mx.random.normal(shape, key=mx.random.key(seed)) * 0.05, bits, group_size, dtype)


def matvec_case(M, N, K, bits, group_size, dtype) -> Case:
    def make(seed):
        x = mx.random.normal((M, K), key=mx.random.key(seed)).astype(dtype)
        return (x, *_quantized((N, K), bits, group_size, dtype, 1000 + seed % 2))

    return Case(f"qmatvec M={M} {N}x{K} {bits}-bit g{group_size}", make,
                lambda x, w, s, b: ops.quantized_matmul(x, w, s, b, group_size, bits))


def swiglu_case(M, N, K, bits, group_size, dtype) -> Case:
    def make(seed):
        x = mx.random.normal((M, K), key=mx.random.key(seed)).astype(dtype)
        gate = _quantized((N, K), bits, group_size, dtype, 2000 + seed % 2)
        up = _quantized((N, K), bits, group_size, dtype, 3000 + seed % 2)
        return (x, *gate, *up)

    return Case(f"qswiglu M={M} {N}x{K} {bits}-bit g{group_size}", make,
                lambda x, *w: ops.quantized_swiglu(x, *w, group_size=group_size, bits=bits))


def attention_case(S, dtype, Hq=32, Hkv=8, D=128, kv_bits=None, group_size=64) -> Case:
    def make(seed):
        q = mx.random.normal((1, Hq, 1, D), key=mx.random.key(seed)).astype(dtype)
        k = mx.random.normal((1, Hkv, S, D), key=mx.random.key(4000 + seed % 2))
        v = mx.random.normal((1, Hkv, S, D), key=mx.random.key(5000 + seed % 2))
        if kv_bits is None:
            return q, k.astype(dtype), v.astype(dtype)
        return q, _quantize(k, kv_bits, group_size, dtype), _quantize(v, kv_bits, group_size, dtype)

    scale = D**-0.5
    if kv_bits is None:
        return Case(f"attention S={S} Hq={Hq} Hkv={Hkv} D={D}", make,
                    lambda q, k, v: ops.decode_attention(q, k, v, scale))
    return Case(f"attention S={S} Hq={Hq} Hkv={Hkv} D={D} {kv_bits}-bit KV", make,
                lambda q, k, v: ops.quantized_decode_attention(q, k, v, scale, group_size=group_size, bits=kv_bits))


def default_cases(dtype) -> list[Case]:
    shapes = [(4096, 4096), (14336, 4096), (4096, 14336)]
    cases = [matvec_case(M, N, K, bits, 64, dtype) for bits in (4, 8) for (N, K) in shapes for M in (1, 8)]
    cases += [swiglu_case(M, 14336, 4096, 4, 64, dtype) for M in (1, 8)]
    cases += [attention_case(S, dtype) for S in (1024, 8192, 32768)]
    cases += [attention_case(S, dtype, kv_bits=bits) for bits in (8, 4) for S in (1024, 8192, 32768)]
    return cases


def _time(case: Case, inputs: list[tuple], trials: int) -> float:
    """Best per-call microseconds over `trials` evaluations of one call per input set."""
    mx.eval([case.call(*a) for a in inputs])  # warm-up: compiles the kernel, allocates
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        mx.eval([case.call(*a) for a in inputs])
        best = min(best, (time.perf_counter() - start) / len(inputs))
    return best * 1e6


def run_case(case: Case, custom_mode: str = "custom", calls: int = 16, trials: int = 10) -> Result:
    inputs = [case.make_inputs(seed) for seed in range(calls)]
    mx.eval(inputs)
    with environment_set("ORCHARD_KERNELS", "builtin"):
        reference = case.call(*inputs[0]).astype(mx.float32)
        builtin = _time(case, inputs, trials)
    with environment_set("ORCHARD_KERNELS", custom_mode):
        candidate = case.call(*inputs[0]).astype(mx.float32)
        custom = _time(case, inputs, trials)
    diff = (mx.abs(candidate - reference).max() / mx.maximum(mx.abs(reference).max(), 1e-30)).item()
    return Result(case.name, builtin, custom, diff)


def format_table(results: list[Result]) -> str:
    lines = ["| case | built-in us | custom us | speedup | max rel diff |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.case} | {r.builtin_us:.1f} | {r.custom_us:.1f} | {r.speedup:.2f}x | {r.max_rel_diff:.1e} |"
              for r in results]
    return "\n".join(lines)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metal_kernels.timing", description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=DTYPES, default="float16")
    parser.add_argument("--trials", type=_positive, default=10)
    parser.add_argument("--calls", type=_positive, default=16, help="independent calls per evaluation")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    backend = backend_name()
    if backend == "cpu":
        print("metal_kernels.timing: the custom kernels run on a GPU backend (Metal or CUDA); MLX runs on the CPU here",
              file=sys.stderr)
        return 2
    print(f"backend {backend}, mlx {mx.__version__}, {args.dtype}, device: {mx.device_info().get('device_name', '?')}")
    results = []
    for case in default_cases(DTYPES[args.dtype]):
        results.append(run_case(case, calls=args.calls, trials=args.trials))
        r = results[-1]
        print(f"{r.case:48s} built-in {r.builtin_us:9.1f} us  custom {r.custom_us:9.1f} us  "
              f"{r.speedup:5.2f}x  diff {r.max_rel_diff:.1e}", flush=True)
    print(format_table(results))
    if args.json:
        doc = {"backend": backend, "mlx": mx.__version__, "dtype": args.dtype,
               "results": [asdict(r) | {"speedup": r.speedup} for r in results]}
        try:
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=1)
        except OSError as e:
            print(f"metal_kernels.timing: cannot write --json {args.json}: {e.strerror}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
