"""nest-rt verify: the sha256 of every file; every model loads and gives finite outputs."""
from __future__ import annotations

from . import options

NAME = "verify"
HELP = "sha256 of every file; every model loads and gives finite outputs"


def add_arguments(parser) -> None:
    parser.add_argument("bundle_dir", nargs="?", metavar="BUNDLE", help="bundle directory (or --bundle)")
    options.add_bundle_option(parser)
    options.add_device_option(parser)
    parser.add_argument("--expect-sha256", metavar="HASH",
                        help="the sha256 of bundle.json from a source you trust: anchors every file's sha256 "
                             "against tampering, not only against corruption")


def run(args) -> None:
    from ..bundle_tools import verify_bundle
    bundle = args.bundle_dir or options.bundle(args)
    count = verify_bundle(bundle, device=args.device, expect_sha256=args.expect_sha256)
    print(f"bundle {bundle} verified: {count} models")
