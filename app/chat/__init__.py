"""`orchard chat`: talk to a local model in a Textual UI (also what plain `orchard` opens)."""

from __future__ import annotations

import argparse

from app.options import add_model_option


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal (the default)", description=__doc__)
    add_model_option(p)
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt for new conversations")
    p.add_argument("--draft", default=None, metavar="M",
                   help="a draft model with the model's tokenizer, for the 'draft' speculative setting (Ctrl+S)")
    p.add_argument("--server", default=None, metavar="URL",
                   help="chat with the model an OpenAI-compatible server serves (e.g. `orchard serve`'s "
                        "http://127.0.0.1:8080) instead of loading one here")
    p.add_argument("--api-key", default=None, metavar="KEY", help="with --server: the server's API key")
    p.add_argument("--ranks", type=int, default=None, metavar="N", dest="server_ranks",
                   help="split the model over N local ranks (`orchard serve --ranks N` in the background, "
                        "this chat its client; docs/distributed.md)")
    p.add_argument("--parallel", choices=("pipeline", "tensor"), default=None, dest="server_parallel",
                   help="with --ranks: how the model is split (default pipeline)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from mlxmodels.errors import OrchardError

    if args.server_parallel is not None and args.server_ranks is None:
        raise OrchardError("--parallel goes with --ranks N")
    if args.server_ranks is not None:
        if args.server is not None or args.draft is not None:
            raise OrchardError("--ranks starts a local server for the chat; it excludes --server and --draft")
        from app.ranks import start_server

        server, args.server = start_server(args.server_ranks, args.server_parallel or "pipeline", args.model,
                                           args.cpu_weights)
        args.model = None  # the server's one model
        try:
            return handle_chat(args)
        finally:
            server.terminate()  # rank 0 drains, then stops the other ranks
            server.wait()
    return handle_chat(args)


def handle_chat(args: argparse.Namespace) -> int:
    from app.chat.app import ChatApp, default_loader
    from app.storage import Store
    from mlxmodels.errors import OrchardError

    if args.server is not None:
        from app.chat.remote import remote_loader

        if args.draft is not None:
            raise OrchardError("--draft loads a model here; with --server the server does the generating")
        loader = remote_loader(args.server, args.api_key)
    elif args.api_key is not None:
        raise OrchardError("--api-key goes with --server")
    else:
        loader = default_loader(args.cpu_weights)
    # Open the store first: a broken or too-new database is a one-line error, not a UI crash.
    app = ChatApp(model=args.model, system_prompt=args.system, loader=loader,
                  store=Store(), draft=args.draft, cpu_weights=args.cpu_weights)
    app.run()
    return app.return_code or 0
