"""Run a Metal kernel on the CPU: compile the MSL that MLX generates as C++ and execute it with fibers.

`generated_msl` captures the exact source `mx.fast.metal_kernel` writes for a call (signature, body
and explicit instantiation) by tracing the call with `mx.export_function`, which works on MLX's CPU
build. `run` compiles that text against emulator/metal_emu.h with AddressSanitizer and UBSan, links
it with the fiber scheduler (emulator/runtime.cpp), runs the grid in three thread orders and returns
the outputs. Binaries are cached under $ORCHARD_EMU_CACHE (default ~/.cache/orchard/emulator) keyed
by a hash of everything that goes into them, so a test run compiles each instantiation once.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np

HERE = Path(__file__).parent / "emulator"
CXX = os.environ.get("CXX", "g++")
# -O1 keeps ASan's reports precise while making the fiber-heavy runs several times faster than -O0.
FLAGS = ["-std=c++17", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
         "-fno-omit-frame-pointer", "-Wall", "-Wno-attributes", "-Wno-unused-variable", "-Wno-unused-but-set-variable",
         "-Werror=return-type", "-Werror=uninitialized"]
TG_MEMORY_LIMIT = 32 * 1024  # bytes of threadgroup memory Apple GPUs give one threadgroup

_NP_VIEW = {mx.float32: (mx.float32, np.float32), mx.float16: (mx.float16, np.float16),
            mx.bfloat16: (mx.uint16, np.uint16), mx.uint32: (mx.uint32, np.uint32), mx.int32: (mx.int32, np.int32),
            mx.uint8: (mx.uint8, np.uint8), mx.uint16: (mx.uint16, np.uint16)}


class EmulatorError(RuntimeError):
    """The kernel failed to compile, or the emulator caught it misbehaving (the message says how)."""


def cache_dir() -> Path:
    root = os.environ.get("ORCHARD_EMU_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "orchard", "emulator")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def generated_msl(kernel, inputs: list[mx.array], **call) -> str:
    """The MSL text MLX generates for `kernel(inputs=inputs, **call)`, captured without a GPU."""
    found = []

    def on_node(node):
        if isinstance(node, dict) and node.get("type") == "primitive" and node.get("name") == "CustomKernel":
            found.append(node["arguments"][1])

    def traced(*arrays):
        return kernel(inputs=list(arrays), **call)

    mx.export_function(on_node, traced, *inputs)
    if len(found) != 1:
        raise EmulatorError(f"expected one custom kernel in the traced call, found {len(found)}")
    return found[0]


_PARAM = re.compile(r"^\s*(?P<type>[\w\s]+?)\s*(?P<ref>[*&])?\s*(?P<name>\w+)\s*\[\[(?P<attr>\w+)(?:\((?P<index>\d+)\))?\]\]")


def driver_source(msl: str) -> tuple[str, int]:
    """C++ that includes the MSL verbatim and calls its kernel for one thread; and its buffer count."""
    m = re.search(r"decltype\((\w+<[^()]*>)\)", msl)
    if not m:
        raise EmulatorError("no explicit instantiation found in the generated MSL")
    callee = m.group(1)
    head = msl[msl.index("void ") : msl.index(") {")]
    args, buffers = [], 0
    for line in head.split("\n")[1:]:
        p = _PARAM.match(line)
        if not p:
            raise EmulatorError(f"cannot read kernel parameter {line.strip()!r}")
        if p["attr"] == "buffer":
            if p["name"].endswith(("_shape", "_strides", "_ndim")):
                raise EmulatorError(f"the emulator does not model {p['name']}: pass sizes as inputs instead")
            ptype, index = p["type"], int(p["index"])
            if p["ref"] == "&":
                args.append(f"*({ptype}*)b[{index}]")
            else:
                args.append(f"({ptype}*)b[{index}]")
            buffers = max(buffers, index + 1)
        else:
            args.append(f"a.{p['name']}")
    body = "\n".join([
        '#include "metal_emu.h"',
        "#line 1 \"kernel.metal\"",
        msl,
        '#include "emu_runtime.h"',
        f"const int orchard_emu::kNumBuffers = {buffers};",
        "void orchard_emu::run_thread(unsigned char** b, const orchard_emu::Attrs& a) {",
        f"  {callee}({', '.join(args)});",
        "}",
        "",
    ])
    return body, buffers


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:20]


def _compile(args: list[str], what: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise EmulatorError(f"{what} failed to compile:\n{done.stderr.strip()[-4000:]}")


def _atomic_output(path: Path, args_for) -> None:
    """Build `path` through a temporary name so parallel test processes never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        args_for(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _threadgroup_statics(binary: Path) -> list[tuple[int, int]]:
    """(offset from the anchor, bytes) of every threadgroup variable, read from the symbol table."""
    out = subprocess.run(["nm", "-S", "-C", str(binary)], capture_output=True, text=True, check=True).stdout
    anchor, statics = None, []
    for line in out.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) == 4 and parts[3] == "orchard_emu_anchor":
            anchor = int(parts[0], 16)
        # Metal kernels cannot have static locals other than threadgroup memory, so every local static
        # of the kernel function is one of its threadgroup arrays.
        elif len(parts) == 4 and parts[2] in "bBdDu" and parts[3].startswith("custom_kernel_") and ")::" in parts[3]:
            statics.append((int(parts[0], 16), int(parts[1], 16)))
    if anchor is None:
        raise EmulatorError("the emulator binary has no anchor symbol")
    return [(addr - anchor, size) for addr, size in statics]


def build(msl: str) -> tuple[Path, int, list[tuple[int, int]]]:
    """Compile (or reuse) the emulator binary for `msl`: its path, buffer count and threadgroup statics."""
    header = (HERE / "metal_emu.h").read_bytes() + (HERE / "emu_runtime.h").read_bytes()
    runtime_src = (HERE / "runtime.cpp").read_bytes()
    cache = cache_dir()
    runtime_obj = cache / f"runtime-{_digest(header, runtime_src, ' '.join(FLAGS))}.o"
    if not runtime_obj.exists():
        _atomic_output(runtime_obj, lambda tmp: _compile(
            [CXX, *FLAGS, "-I", str(HERE), "-c", str(HERE / "runtime.cpp"), "-o", str(tmp)], "the emulator runtime"))
    source, buffers = driver_source(msl)
    binary = cache / f"kernel-{_digest(header, runtime_src, source, ' '.join(FLAGS))}"
    if not binary.exists():
        with tempfile.TemporaryDirectory() as work:
            cpp = Path(work) / "driver.cpp"
            cpp.write_text(source)
            _atomic_output(binary, lambda tmp: _compile(
                [CXX, *FLAGS, "-I", str(HERE), str(cpp), str(runtime_obj), "-o", str(tmp)], "the kernel"))
    statics = _threadgroup_statics(binary)
    total = sum(size for _, size in statics)
    if total > TG_MEMORY_LIMIT:
        raise EmulatorError(f"the kernel declares {total} bytes of threadgroup memory; Metal allows {TG_MEMORY_LIMIT}")
    return binary, buffers, statics


def _to_bytes(a: mx.array) -> bytes:
    view, _ = _NP_VIEW[a.dtype]
    return np.array(a.view(view) if view != a.dtype else a).tobytes()


def _body_line_mapper(msl: str, source_name: str):
    """Rewrite line numbers of the generated MSL ('kernel.metal:N', 'line N') as lines of the body
    file, which is what a person edits. The body starts after the signature's closing ') {'."""
    lines = msl.splitlines()
    start = next(i for i, l in enumerate(lines) if l.rstrip().endswith(") {")) + 1

    def body_line(n: int) -> str:
        k = n - start
        return f"{source_name}:{k}" if 1 <= k <= len(lines) - start else f"generated MSL line {n}"

    buffers = {}
    for line in lines[:start]:
        p = _PARAM.match(line)
        if p and p["attr"] == "buffer":
            buffers[int(p["index"])] = p["name"]

    def rewrite(text: str) -> str:
        text = re.sub(r"output buffer (\d+)", lambda m: f"output {buffers.get(int(m.group(1)), m.group(1))!r}", text)
        return re.sub(r"(?:\S*kernel\.metal:|\bline )(\d+)", lambda m: body_line(int(m.group(1))), text)

    return rewrite


def run(msl: str, inputs: list[mx.array], output_shapes, output_dtypes, grid, threadgroup,
        init_value: float | None = None, seed: int = 0, source_name: str = "kernel") -> list[mx.array]:
    """Execute the kernel `msl` on `inputs`; outputs start as NaN unless `init_value` is given, and an
    output element no thread wrote (still NaN) is an error: the grid did not cover the output.
    Errors name lines of the body as `source_name:line`."""
    try:
        return _run(msl, inputs, output_shapes, output_dtypes, grid, threadgroup, init_value, seed)
    except EmulatorError as error:
        raise EmulatorError(_body_line_mapper(msl, source_name)(str(error))) from None


def _run(msl, inputs, output_shapes, output_dtypes, grid, threadgroup, init_value, seed):
    binary, buffers, statics = build(msl)
    if buffers != len(inputs) + len(output_shapes):
        raise EmulatorError(f"the kernel binds {buffers} buffers but {len(inputs)} inputs and {len(output_shapes)} outputs were given")
    inputs = [mx.contiguous(x) for x in inputs]
    mx.eval(inputs)
    with tempfile.TemporaryDirectory() as work:
        argv = [str(binary), *map(str, grid), *map(str, threadgroup), str(seed),
                ",".join(f"{off}:{size}" for off, size in statics) or "-"]
        for i, x in enumerate(inputs):
            path = Path(work) / f"in{i}"
            path.write_bytes(_to_bytes(x))
            argv += [str(path), "0"]
        out_paths = []
        for i, (shape, dtype) in enumerate(zip(output_shapes, output_dtypes)):
            fill = mx.full(tuple(shape), float("nan") if init_value is None else init_value, dtype=dtype)
            path = Path(work) / f"out{i}"
            path.write_bytes(_to_bytes(fill))
            argv += [str(path), "1"]
            out_paths.append(path)
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=4",
                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=5")
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise EmulatorError(_summarise(done.stderr, done.returncode))
        outputs = []
        for path, shape, dtype in zip(out_paths, output_shapes, output_dtypes):
            view, np_dtype = _NP_VIEW[dtype]
            data = mx.array(np.frombuffer(path.read_bytes(), dtype=np_dtype).reshape(tuple(shape)))
            outputs.append(data.view(dtype) if view != dtype else data)
    if init_value is None:
        for i, out in enumerate(outputs):
            if mx.issubdtype(out.dtype, mx.floating):
                unwritten = int(mx.isnan(out).sum().item())
                if unwritten:
                    raise EmulatorError(f"{unwritten} of {out.size} elements of output {i} were never written "
                                        f"or hold NaN (grid {tuple(grid)} too small, or a read of threadgroup "
                                        "memory no thread wrote?)")
    return outputs


def _summarise(stderr: str, code: int) -> str:
    """The lines of a sanitizer or scheduler report that say what went wrong and where."""
    lines = stderr.strip().splitlines()
    keep = [l for l in lines
            if l.startswith("emulator:") or (l.startswith("==") and "ERROR" in l) or "runtime error" in l
            or "kernel.metal" in l or l.startswith(("READ", "WRITE"))]
    return "\n".join((keep or lines)[:12]) or f"the emulator exited with status {code}"
