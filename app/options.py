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
        help="CPU backend only: keep fp32 copies of quantized weights (fast, 8x the memory), stay "
        "quantized (prefill still dequantizes), decide by model size (default), or use MLX's own "
        "quantized kernels unchanged (for comparisons)",
    )


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
