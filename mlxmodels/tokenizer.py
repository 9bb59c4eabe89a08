"""Tokenizers and chat templates, from a model directory or from GGUF metadata.

Directories go through transformers' `AutoTokenizer` (tokenizer.json, or SentencePiece
tokenizer.model) wrapped in mlx-lm's `TokenizerWrapper`, which adds the streaming detokenizers.
GGUF files carry their vocabulary as metadata: byte-level BPE vocabularies (Llama 3, SmolLM, Qwen)
are rebuilt here directly with `tokenizers`, which is fast; SentencePiece ones go through
transformers' GGUF converter.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mlxmodels.errors import OrchardError

# transformers warns about things that are not the user's business (e.g. no torch installed).
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
logging.getLogger("transformers").setLevel(logging.ERROR)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")

# GGUF `tokenizer.ggml.pre` values whose vocabularies split digits one by one before byte-level BPE.
_DIGIT_SPLITTERS = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva-7b"}
# ... whose vocabularies use Qwen 2's split (GGUFs of Qwen2, Qwen2.5, Qwen3 and their MoE models).
_QWEN2_SPLITTERS = ("qwen2", "deepseek-r1-qwen", "megrez")


def has_tokenizer(model_dir: Path) -> bool:
    return any((Path(model_dir) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(model_dir: Path, eos_token_ids=None):
    """mlx-lm's TokenizerWrapper for a model directory, with a one-line error if there is none."""
    model_dir = Path(model_dir)
    if not has_tokenizer(model_dir):
        raise OrchardError(
            f"{model_dir}: no tokenizer files (tokenizer.json or tokenizer.model); "
            "the weights alone load with mlxmodels.load_model"
        )
    from mlx_lm.tokenizer_utils import load as mlx_lm_load_tokenizer

    try:
        return mlx_lm_load_tokenizer(model_dir, eos_token_ids=eos_token_ids)
    except Exception as e:  # transformers raises many kinds of errors for broken files
        raise OrchardError(f"{model_dir}: cannot load the tokenizer ({type(e).__name__}: {e})") from None


def _byte_level_tokenizer(meta: dict):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre in _DIGIT_SPLITTERS:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    elif pre in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3", *_QWEN2_SPLITTERS):
        # Qwen 2/3 split like Llama 3 but digits one at a time (llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2).
        digits = r"\p{N}" if pre in _QWEN2_SPLITTERS else r"\p{N}{1,3}"
        split = (
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|" + digits +
            r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:  # "gpt2", "default" and friends: GPT-2's own split
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _add_special_tokens(tok, meta: dict) -> None:
    from tokenizers import AddedToken

    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type")
    if types is None:
        return
    types = list(types)
    control = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3]
    user = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4]
    if control:
        tok.add_special_tokens(control)
    if user:
        tok.add_tokens(user)


def gguf_hf_tokenizer(meta: dict, path: Path):
    """A transformers fast tokenizer equivalent to the GGUF's, chat template included."""
    from transformers import PreTrainedTokenizerFast

    tokens = meta.get("tokenizer.ggml.tokens")
    model = meta.get("tokenizer.ggml.model")
    if tokens is None or model is None:
        raise OrchardError(f"{path}: GGUF file has no tokenizer metadata (tokenizer.ggml.*)")

    def token(key):
        index = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(index)] if index is not None and 0 <= int(index) < len(tokens) else None

    if model == "gpt2":
        backend = _byte_level_tokenizer(meta)
        _add_special_tokens(backend, meta)
    else:
        backend = _converted_by_transformers(meta, path)
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", model == "llama"))
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=token("bos_token_id"),
        eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id"),
        chat_template=meta.get("tokenizer.chat_template"),
        add_bos_token=add_bos,
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
    )
    if add_bos and hf.bos_token is not None:
        # A backend built from scratch has no template that prepends BOS: give it one.
        from tokenizers import processors

        bos = hf.bos_token
        hf.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, hf.bos_token_id)]
        )
    return hf


def _converted_by_transformers(meta: dict, path: Path):
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    renames = GGUF_TOKENIZER_MAPPING["tokenizer"]
    tokenizer_dict = {
        name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta
    }
    for key in ("tokens", "merges"):
        if key in tokenizer_dict:
            tokenizer_dict[key] = list(tokenizer_dict[key])
    for key in ("scores", "token_type"):
        if key in tokenizer_dict:
            tokenizer_dict[key] = [x for x in tokenizer_dict[key].tolist()]
    try:
        backend, _ = convert_gguf_tokenizer(meta.get("general.architecture", "llama"), tokenizer_dict)
    except Exception as e:
        raise OrchardError(f"{path}: cannot build a tokenizer from the GGUF metadata ({e})") from None
    if meta.get("tokenizer.ggml.add_space_prefix") is False:
        # transformers' converter always prepends "▁" to the text (and strips it when decoding), as
        # Llama 2's SentencePiece does; Gemma's does not: "The" at the start is the piece "The",
        # not "▁The". llama.cpp honours the flag, and so must we to feed the model its own tokens.
        from tokenizers import decoders, pre_tokenizers

        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
        backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return backend


def load_gguf_tokenizer(meta: dict, path: Path):
    """mlx-lm's TokenizerWrapper around the GGUF's tokenizer, with the matching streaming detokenizer."""
    from mlx_lm.tokenizer_utils import (
        BPEStreamingDetokenizer,
        NaiveStreamingDetokenizer,
        SPMStreamingDetokenizer,
        TokenizerWrapper,
    )

    detokenizers = {"gpt2": BPEStreamingDetokenizer, "llama": SPMStreamingDetokenizer}
    detokenizer = detokenizers.get(meta.get("tokenizer.ggml.model"), NaiveStreamingDetokenizer)
    return TokenizerWrapper(gguf_hf_tokenizer(meta, path), detokenizer)
