"""nest-rt list: the models a bundle holds, as a table."""
from __future__ import annotations

from . import options

NAME = "list"
HELP = "the models a bundle holds, as a table"


def add_arguments(parser) -> None:
    options.add_bundle_option(parser)


def run(args) -> None:
    from ..bundle import Bundle
    from ..bundle_tools import bundle_rows, format_table
    bundle = Bundle(options.bundle(args))
    rows = bundle_rows(bundle)
    print(format_table(rows))
    print(f"{len(rows)} models in {bundle.root}")
