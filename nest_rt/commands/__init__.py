"""The verbs of ``nest-rt``, one module each, in the order ``nest-rt --help`` lists them.

A verb's module has NAME and HELP, optionally PARSER (more keyword arguments for its parser, e.g. a
description), ``add_arguments(parser)`` and ``run(args)``. It imports only light modules at its
top (the standard library, catalog, errors, options), and the runtime inside ``run``, so that
``nest-rt --help`` and ``nest-rt VERB --help`` load neither numpy nor onnxruntime. Adding a verb:
one module here and its line in COMMANDS.
"""
from __future__ import annotations

import argparse

from . import demo, encode, export, info, listing, merge, plot, synthetic_toolkit, verify

COMMANDS = (demo, synthetic_toolkit, export, listing, info, verify, encode, merge, plot)


def add_commands(parser: argparse.ArgumentParser) -> None:
    """One subcommand per verb; each parser's ``handler`` default is the verb's ``run``."""
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        verb = subparsers.add_parser(command.NAME, help=command.HELP, **getattr(command, "PARSER", {}))
        command.add_arguments(verb)
        verb.set_defaults(handler=command.run)
