"""nest-rt merge: assemble the shards of one encode run."""
from __future__ import annotations

from pathlib import Path

NAME = "merge"
HELP = "assemble the shards of one encode run"


def add_arguments(parser) -> None:
    parser.add_argument("shards", nargs="+", type=Path, help="the shard output folders")
    parser.add_argument("--out", type=Path, required=True, help="new folder for the merged run")


def run(args) -> None:
    from ..runs import merge_runs
    merge_runs(args.shards, args.out)
