"""How the grammar engine was chosen: llguidance, xgrammar and outlines-core on SmolLM2's tokenizer
(49152 tokens) — vocabulary set-up, schema compile, and per-token mask + advance while walking the
example answers of the 20 schemas in tests/fixtures/json_schemas.json. Not part of the test suite.

    pip install --target /tmp/engines --no-deps llguidance outlines-core xgrammar apache-tvm-ffi
    python tests/bench_grammar_engines.py llguidance|xgrammar|outlines /tmp/engines

xgrammar imports torch at module level, though its masks work through DLPack (numpy here); a stub
module stands in for torch so the comparison needs no torch install (its dependency on torch, GBs
with the CUDA libraries on Linux, is one reason it was not chosen). outlines-core reads no
tokenizer offline: its vocabulary is built here from the byte-level token strings.
"""
import json, sys, time, types, statistics
from pathlib import Path
import numpy as np

sys.path.insert(0, sys.argv[2])
import mlxmodels  # noqa
from mlxmodels.tokenizer import load_tokenizer
from mlxmodels.default_model import ensure_default_model

which = sys.argv[1]
tok = load_tokenizer(ensure_default_model())
hf = tok._tokenizer
V = 49152
cases = json.loads((Path(__file__).parent / "fixtures" / "json_schemas.json").read_text())
docs = [json.dumps(c["example"], separators=(", ", ": ")) for c in cases]
ids = [hf.encode(d, add_special_tokens=False) for d in docs]
eos = 2

def run(init, compile_one, make, fill, consume):
    t = time.perf_counter(); ctx = init(); t_init = time.perf_counter() - t
    comp, per_tok, first = [], [], []
    mask = np.zeros((1, (V + 31) // 32), dtype=np.int32)
    for case, toks in zip(cases, ids):
        t = time.perf_counter(); g = compile_one(ctx, case["schema"]); comp.append(time.perf_counter() - t)
        m = make(ctx, g)
        t = time.perf_counter(); fill(m, mask); first.append(time.perf_counter() - t)
        consume(m, toks[0])
        t = time.perf_counter()
        for tid in toks[1:]:
            fill(m, mask)
            assert (mask[0, tid // 32] >> (tid % 32)) & 1, (case["name"], tid)
            assert consume(m, tid) is not False, (case["name"], tid)
        fill(m, mask)
        assert (mask[0, eos // 32] >> (eos % 32)) & 1, ("eos not allowed at end", case["name"])
        per_tok.append((time.perf_counter() - t) / len(toks))
    ntok = sum(len(t) for t in ids)
    print(f"{which}: tokenizer init {t_init*1000:.0f} ms | schema compile median {statistics.median(comp)*1000:.2f} ms, max {max(comp)*1000:.1f} ms"
          f" | first mask median {statistics.median(first)*1e6:.0f} us | per token (mask+advance) mean {statistics.mean(per_tok)*1e6:.1f} us,"
          f" max schema {max(per_tok)*1e6:.1f} us over {ntok} tokens")

if which == "llguidance":
    import llguidance, llguidance.numpy as lnp
    from llguidance import LLMatcher, LLTokenizer
    def init():
        return LLTokenizer(hf.backend_tokenizer.to_str(), n_vocab=V, eos_token=eos)
    def compile_one(t, s):
        g = LLMatcher.grammar_from_json_schema(s, defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
        err = LLMatcher.validate_grammar(g, t); assert not err, err
        return g
    def make(t, g):
        m = LLMatcher(t, g); assert not m.is_error(), m.get_error(); return m
    def fill(m, mask): lnp.fill_next_token_bitmask(m, mask, 0)
    def consume(m, tid): return m.consume_token(tid)
    run(init, compile_one, make, fill, consume)
elif which == "xgrammar":
    import tvm_ffi  # noqa: before the torch stub, so it sees no torch
    # xgrammar imports torch at module level only for type hints/helpers; masks go through DLPack (numpy).
    if "torch" not in sys.modules:
        torch = types.ModuleType("torch"); torch.Tensor = object; torch.dtype = object; torch.device = object
        torch.int32 = "int32"; torch.bool = "bool"; torch.float32 = "float32"
        torch.cuda = types.SimpleNamespace(is_available=lambda: False)
        import importlib.machinery; torch.__spec__ = importlib.machinery.ModuleSpec("torch", None)
        sys.modules["torch"] = torch
    torch.__getattr__ = lambda name: type(name, (), {"__init__": lambda self, *a, **k: None})
    import xgrammar as xgr
    def init():
        info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=V, stop_token_ids=[eos])
        return xgr.GrammarCompiler(info, cache_enabled=False)
    def compile_one(c, s):
        return c.compile_json_schema(json.dumps(s), any_whitespace=False, separators=(", ", ": "))
    def make(c, g): return xgr.GrammarMatcher(g)
    def fill(m, mask): m.fill_next_token_bitmask(mask, 0)
    def consume(m, tid): return m.accept_token(tid)
    run(init, compile_one, make, fill, consume)
elif which == "outlines":
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema
    def init():
        # outlines-core needs token -> ids keyed by the token's decoded bytes (no HF object support offline)
        bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256)); cs = bs[:]; n = 0
        for b in range(256):
            if b not in bs: bs.append(b); cs.append(256 + n); n += 1
        byte_dec = {chr(c): b for b, c in zip(bs, cs)}
        m = {}
        for t, i in hf.get_vocab().items():
            if i == eos: continue
            try: b = bytes(byte_dec[ch] for ch in t)
            except KeyError: b = t.encode()
            m.setdefault(b, []).append(i)
        return Vocabulary(eos, m)
    def compile_one(v, s):
        return Index(build_regex_from_schema(json.dumps(s), r"[ ]?"), v)
    def make(v, idx): return Guide(idx)
    def fill(g, mask): g.write_mask_into(mask.ctypes.data, mask.size, mask.itemsize)
    def consume(g, tid): g.advance(tid); return True
    run(init, compile_one, make, fill, consume)
