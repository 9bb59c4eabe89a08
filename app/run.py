"""`orchard run`: answer one prompt, streaming the completion to stdout and the stats to stderr."""

from __future__ import annotations

import argparse
import sys

from app import ranks
from app.options import (add_distributed_options, add_kv_bits_option, add_model_option, add_sampling_options,
                         add_speculative_options, sampling_from_args, speculative_from_args)


def register(sub) -> None:
    p = sub.add_parser("run", help="answer one prompt", description=__doc__)
    add_model_option(p)
    p.add_argument("--prompt", "-p", required=True, help="the prompt; '-' reads it from stdin")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--max-tokens", type=int, default=512, help="most tokens to generate (default 512)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop at this text (repeatable)")
    p.add_argument("--no-chat-template", action="store_true", help="send the prompt as raw text")
    p.add_argument("--quiet", "-q", action="store_true", help="no stats on stderr")
    add_kv_bits_option(p, "for long contexts")
    shape = p.add_argument_group("structured output (the output is guaranteed to match)").add_mutually_exclusive_group()
    shape.add_argument("--json-schema", metavar="FILE|JSON", default=None,
                       help="a JSON Schema, as a file or inline JSON: the output is JSON valid against it")
    shape.add_argument("--json-object", action="store_true", help="the output is a JSON object (any keys)")
    shape.add_argument("--regex", metavar="PATTERN", default=None, help="the whole output matches this regex")
    shape.add_argument("--grammar", metavar="FILE", default=None,
                       help="a Lark grammar (or GBNF, as llama.cpp writes it): the output is a sentence of it")
    add_sampling_options(p)
    add_speculative_options(p)
    add_distributed_options(p)
    p.set_defaults(handler=handle)


def _read_file(path: str, option: str) -> str:
    from mlxmodels.errors import OrchardError

    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise OrchardError(f"{option} {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None


def constraint_from_args(args: argparse.Namespace):
    """The structured-output constraint the flags ask for (checked now, before the model loads:
    a bad schema, regex or grammar generates nothing), or None."""
    from mlxmodels.constrain import Constraint

    if args.json_schema is not None:
        value = args.json_schema
        if value.lstrip().startswith("{"):
            return Constraint.json_schema(value, "--json-schema")
        return Constraint.json_schema(_read_file(value, "--json-schema"), f"--json-schema {value}")
    if args.json_object:
        return Constraint.json_object("--json-object")
    if args.regex is not None:
        return Constraint.regex(args.regex, "--regex")
    if args.grammar is not None:
        return Constraint.grammar(_read_file(args.grammar, "--grammar"), f"--grammar {args.grammar}")
    return None


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _decoded(data: bytes, source: str) -> str:
    """`data` as UTF-8 text (what tokenizers read). Bytes that are not UTF-8 become U+FFFD, with a
    one-line warning: a stray Latin-1 byte or a binary fragment in a piped log should not cost the
    whole answer, and the warning says the model did not see those bytes as they were."""
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # a byte-order mark is not part of the prompt
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        first = bom + e.start
    text = data[bom:].decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - data.count("\ufffd".encode())
    _status(f"orchard: warning: {source} is not valid UTF-8: {replaced} invalid byte sequence"
            f"{'s' if replaced != 1 else ''} (the first at byte {first}) replaced with U+FFFD")
    return text


def _stdin_text() -> str:
    stream = getattr(sys.stdin, "buffer", None)  # None: replaced by a text-only stream
    return sys.stdin.read() if stream is None else _decoded(stream.read(), "the prompt on stdin")


def _argument_text(value: str, option: str) -> str:
    """A command-line value: Python hands undecodable argv bytes over as lone surrogates, which the
    tokenizer rejects; they get the same treatment as stdin."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _decoded(value.encode("utf-8", "surrogateescape"), option)
    return value


def _prefill_progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\rprefill {done}/{total} tokens", end="", file=sys.stderr, flush=True)


def handle(args: argparse.Namespace) -> int:
    from mlxmodels import make_cache, stream_generate
    from mlxmodels.errors import OrchardError
    from mlxmodels.prompt import format_messages, generation_defaults, has_chat_template

    prompt = _stdin_text() if args.prompt == "-" else _argument_text(args.prompt, "--prompt")
    system = None if args.system is None else _argument_text(args.system, "--system")
    if not prompt.strip():
        raise OrchardError("the prompt is empty")
    if args.max_tokens < 1:
        raise OrchardError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    constraint = constraint_from_args(args)

    ranks.check_speculative(args)
    model, tokenizer = ranks.load(args, progress=_status)
    sampling = sampling_from_args(args, generation_defaults(model.info.path) if model.info.path.is_dir() else {})
    speculative = speculative_from_args(args, model, tokenizer, progress=_status)

    if args.no_chat_template:
        text = prompt if system is None else f"{system}\n\n{prompt}"
    else:
        if not has_chat_template(tokenizer) and not args.quiet:
            _status("orchard: note: the model has no chat template; sending a plain transcript")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        text = format_messages(tokenizer, messages)

    if args.kv_bits is not None and not args.quiet:
        from mlxmodels.api import kv_bits_no_effect

        why = kv_bits_no_effect(model, args.kv_bits)
        if why:
            _status(f"orchard: note: --kv-bits {args.kv_bits} changes nothing: {why}")

    stats = None
    for chunk in stream_generate(
        model, tokenizer, text, max_tokens=args.max_tokens, sampling=sampling, stop=args.stop,
        cache=make_cache(model, kv_bits=args.kv_bits), on_prefill_progress=_prefill_progress,
        speculative=speculative, constraint=constraint,
    ):
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        stats = chunk.stats or stats
    sys.stdout.write("\n")
    sys.stdout.flush()
    if constraint is not None and stats.finish_reason in ("length", "context"):
        _status(f"orchard: warning: the output stopped at {stats.generation_tokens} tokens, before it was "
                f"complete ({constraint.origin}); raise --max-tokens")
    if not args.quiet:
        if sys.stderr.isatty():
            print("\r\033[K", end="", file=sys.stderr)
        _status(format_stats(stats))
        note = model.info.describe_cpu_weights()
        if note:
            _status(f"weights: {note}")
        split = getattr(model, "distributed", None)
        if split is not None:
            _status(f"distributed: {split.group.size} ranks, {split.parallel} parallel (docs/distributed.md)")
    return 0


def format_stats(s) -> str:
    return (
        f"prompt: {s.prompt_tokens} tokens, {s.prompt_tps:.1f} tok/s | "
        f"first token: {s.ttft:.2f} s | "
        f"generation: {s.generation_tokens} tokens, {s.generation_tps:.1f} tok/s | "
        f"peak memory: {s.peak_memory_gb:.2f} GB | stop: {s.finish_reason}"
    ) + (f" | speculative: {s.acceptance_rate:.0%} of {s.draft_tokens} guesses accepted, "
         f"{s.tokens_per_pass:.2f} tokens per pass" if s.draft_tokens else "")
