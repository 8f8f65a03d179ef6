"""``rlimpact``: run the local stack, feed it, train, and score replays.

Each module of this package registers its own subcommands; add a command by adding a module
with a ``register(commands)`` function and listing it in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse

from services.cli import (
    analysis,
    collect,
    ingest,
    labels,
    live,
    models,
    offline,
    retry,
    stack,
    supervisor,
    validate,
)
from shared.settings import get_settings

COMMAND_MODULES = (
    stack,
    supervisor,
    ingest,
    retry,
    offline,
    collect,
    labels,
    live,
    models,
    analysis,
    validate,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlimpact", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args, get_settings())
