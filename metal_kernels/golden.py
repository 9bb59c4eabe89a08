"""The generated MSL of every kernel instantiation the public functions can launch, as golden files.

MLX writes each kernel's signature itself (address spaces from input sizes, attribute parameters
from the words in the body), so a change in MLX or in a body can change what runs on a Mac without
any test here failing. tests/test_kernels_golden.py diffs these texts against tests/kernels/golden/;
after an intended change, regenerate them with `python -m metal_kernels.golden tests/kernels/golden`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlx.core as mx

DTYPES = (mx.float32, mx.float16, mx.bfloat16)
BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)


def _calls():
    """Run every public function once per instantiation it can use, on decode-like example shapes."""
    import metal_kernels as mk

    K, N = 256, 16
    for dt in DTYPES:
        x = mx.zeros((1, K), dtype=dt)
        for bits in BITS:
            for gs in GROUP_SIZES:
                w, s, b = mx.quantize(mx.zeros((N, K)), group_size=gs, bits=bits)
                mk.quantized_matmul(x, w, s, b, gs, bits)
                for act in ("silu", "gelu_approx"):
                    mk.quantized_swiglu(x, w, s, b, w, s, b, gs, bits, activation=act)
        q = mx.zeros((1, 8, 1, 128), dtype=dt)
        kv = mx.zeros((1, 2, 64, 128), dtype=dt)
        mk.decode_attention(q, kv, kv, 0.1)
        for bits in BITS:
            for gs in GROUP_SIZES:
                packed = mx.quantize(kv.astype(mx.float32), group_size=gs, bits=bits)
                mk.quantized_decode_attention(q, packed, packed, 0.1, group_size=gs, bits=bits)


def captured_launches() -> list:
    """Every kernel launch the public functions make on `_calls`' shapes (metal_kernels.kernels.Launch)."""
    from metal_kernels import kernels
    from metal_kernels.backend import environment_set

    with environment_set("ORCHARD_KERNELS", "emulate"), kernels.capture() as captured:
        _calls()
    return captured


def render() -> dict[str, str]:
    """File name -> text: one file per kernel source, every instantiation's MSL in a stable order."""
    from metal_kernels import kernels

    captured = captured_launches()
    files: dict[str, list[str]] = {}
    for launch in captured:
        stem = Path(launch.kernel.source).stem + ("_quant_kv" if launch.kernel is kernels.QUANT_ATTENTION else "")
        texts = files.setdefault(f"{stem}.metal", [])
        if launch.msl not in texts:
            texts.append(launch.msl)
    return {name: "".join(f"// ---- instantiation {i} ----\n{t}\n" for i, t in enumerate(texts))
            for name, texts in files.items()}


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render().items():
        path = directory / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m metal_kernels.golden DIRECTORY")
    for path in write(Path(sys.argv[1])):
        print(path)
