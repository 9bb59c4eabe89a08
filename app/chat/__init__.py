"""`orchard chat`: talk to a local model in a Textual UI (also what plain `orchard` opens)."""

from __future__ import annotations

import argparse

from app.options import add_model_option


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal (the default)", description=__doc__)
    add_model_option(p)
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt for new conversations")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from app.chat.app import ChatApp, default_loader
    from app.storage import Store

    # Open the store first: a broken or too-new database is a one-line error, not a UI crash.
    app = ChatApp(model=args.model, system_prompt=args.system, loader=default_loader(args.cpu_weights),
                  store=Store())
    app.run()
    return app.return_code or 0
