"""nest-rt info: one model's contract, dimensions, provenance and export parity."""
from __future__ import annotations

from .. import catalog
from . import options

NAME = "info"
HELP = "one model: contract, dimensions, provenance, parity at export"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model id (or fwrf, eeg, fsaverage)")
    options.add_bundle_option(parser)


def run(args) -> None:
    from ..bundle import Bundle
    from ..bundle_tools import model_info
    print(model_info(Bundle(options.bundle(args)), catalog.canonical_id(args.model)))
