"""Command-line options shared by the subcommands (model choice, sampling)."""

from __future__ import annotations

import argparse

from mlxmodels.sampling import SamplingParams

# Without a generation_config.json: greedy, like mlx-lm and like `orchard chat` (see ChatParams for
# why small models need it).
FALLBACK_SAMPLING = {"temperature": 0.0, "top_p": 1.0}


def add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", "-m", default=None, metavar="M",
        help="model directory, .gguf file, catalog name or Hugging Face repo id (default: SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--cpu-weights", choices=("auto", "fp32", "quantized", "mlx"), default="auto",
        help="CPU backend only: keep fp32 copies of quantized weights (~6x the memory), stay "
        "quantized (Orchard's native kernel for decode, dequantize + GEMM for prefill), stay quantized "
        "when the native kernel is built, else decide by model size (default), or use MLX's own "
        "quantized kernels unchanged (for comparisons)",
    )


def add_kv_bits_option(parser: argparse.ArgumentParser, saving: str) -> None:
    from mlxmodels.api import KV_BITS

    parser.add_argument(
        "--kv-bits", type=int, choices=KV_BITS, default=None,
        help=f"store the KV cache quantized to 4 or 8 bits, or as float16 with 16 (less memory {saving}; 16 "
        "also halves what each decode step reads of a float32 model's cache: faster long-context and "
        "batched decode on the CPU)",
    )


def add_distributed_options(parser: argparse.ArgumentParser) -> None:
    from app.ranks import add_options

    add_options(parser)


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sampling (defaults: the model's generation_config.json, else greedy)")
    g.add_argument("--temp", type=float, default=None, help="temperature; 0 is greedy")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (0, 1]")
    g.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (0: off)")
    g.add_argument("--min-p", type=float, default=None, help="drop tokens below min-p x the top probability")
    g.add_argument("--repetition-penalty", type=float, default=None, help="penalise recent tokens (1.0: off)")
    g.add_argument("--seed", type=int, default=None, help="random seed, for repeatable sampling")


def sampling_from_args(args: argparse.Namespace, model_defaults: dict) -> SamplingParams:
    """Flags given on the command line win over the model's defaults, which win over ours."""
    merged = {**FALLBACK_SAMPLING, **model_defaults}
    flags = {"temperature": args.temp, "top_p": args.top_p, "top_k": args.top_k, "min_p": args.min_p,
             "repetition_penalty": args.repetition_penalty, "seed": args.seed}
    merged.update({k: v for k, v in flags.items() if v is not None})
    fields = SamplingParams.__dataclass_fields__
    return SamplingParams(**{k: v for k, v in merged.items() if k in fields}).validate()


def add_speculative_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("speculative decoding (the same output, several tokens per model pass)")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--draft", metavar="M", default=None,
                       help="a smaller model with the same tokenizer guesses ahead (e.g. a 2-bit conversion of "
                            "the model, `orchard convert M --bits 2`)")
    which.add_argument("--prompt-lookup", type=int, metavar="N", default=None,
                       help="guess the text that followed the last match of the final N tokens (N-grams down to "
                            "1) in the prompt or the answer: fast when the answer repeats its input")
    which.add_argument("--mtp", action="store_true",
                       help="guess with the model's own multi-token-prediction layers (DeepSeek-V3, GLM-4.5)")
    g.add_argument("--num-draft", type=int, metavar="K", default=None,
                   help="the most tokens guessed per pass; fewer when guesses fail (default: 4 for --draft, "
                        "10 for --prompt-lookup, 2 for --mtp)")


def speculative_from_args(args: argparse.Namespace, model, tokenizer, progress=None):
    """The `SpeculativeDecoder` the flags ask for (None without any); a draft model is loaded and
    checked against the model's tokenizer here, before any generation."""
    from mlxmodels.errors import OrchardError

    if args.draft is None and args.prompt_lookup is None and not args.mtp:
        if args.num_draft is not None:
            raise OrchardError("--num-draft needs --draft, --prompt-lookup or --mtp")
        return None
    from mlxmodels.proposers import MTPHeads, PromptLookup, load_draft
    from mlxmodels.speculative import SpeculativeDecoder

    if args.num_draft is not None and args.num_draft < 1:
        raise OrchardError(f"--num-draft must be at least 1, got {args.num_draft}")
    if args.prompt_lookup is not None:
        if args.prompt_lookup < 1:
            raise OrchardError(f"--prompt-lookup must be at least 1, got {args.prompt_lookup}")
        proposer = PromptLookup(args.prompt_lookup)
    elif args.mtp:
        proposer = MTPHeads(model)
    else:
        proposer = load_draft(args.draft, model, tokenizer, cpu_weights=getattr(args, "cpu_weights", "auto"),
                              progress=progress)
    return SpeculativeDecoder(proposer, args.num_draft)
