"""The ``nest-rt`` command line.

Subcommands:
  demo               build a synthetic toolkit (or use --nest-dir), export it, encode images
  synthetic-toolkit  write a toolkit with random weights in the upstream file formats
  export             convert a NEST toolkit directory into an ONNX bundle (needs torch)
  list               the models a bundle holds, as a table
  info               one model's contract, dimensions, provenance and export parity
  verify             check a bundle: sha256 of every file, every graph loads and gives finite outputs
  encode             encode images (files, folders, globs, .npy/.h5 arrays) to response files;
                     resumable after any interruption, shardable with --shard I/N
  merge              assemble the shards of one encode run and verify them
  plot               PNG plots of an encode run's responses
Exit codes: 0 success; 2 for every user error, with a one-line reason on stderr and no
traceback; 130 when interrupted by Ctrl-C and 143 by SIGTERM (re-run the same encode command to
resume); 141 when the reader of the output has gone (nest-rt list | head).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from . import interrupts
from .commands import add_commands
from .commands.export_extra import ExportExtraMissing
from .errors import NESTError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with interrupts.stop_on_signals():
            status = args.handler(args) or 0
            interrupts.raise_if_stopped()  # a stop Python dropped is still reported as one
        sys.stdout.flush()  # here, so that a closed pipe is handled below and not at interpreter exit
        return status
    except ExportExtraMissing as exc:
        print(f"nest-rt: {exc}", file=sys.stderr)
        return 2
    except (NESTError, ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"nest-rt {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        terminated = interrupts.received() == signal.SIGTERM
        print(f"nest-rt {args.command}: " + ("terminated (SIGTERM)" if terminated else "interrupted") + (
            "; finished chunks are kept: run the same command again to resume" if args.command == "encode" else ""),
            file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # e.g. nest-rt list | head: the reader has gone; no traceback, 128 + SIGPIPE
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that Python's final flush of stdout stays quiet
        return 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nest-rt", description=__doc__.split("\n")[0])
    add_commands(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main())
