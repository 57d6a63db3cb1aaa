"""Options that several verbs share, each defined once, and the values they give."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import catalog
from ..errors import InvalidParameterError


def add_bundle_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--bundle", default=os.environ.get("NEST_RT_BUNDLE"),
                         help="bundle directory (default: $NEST_RT_BUNDLE)")


def bundle(args) -> str:
    """The --bundle given or taken from $NEST_RT_BUNDLE; refused when there is neither."""
    if not args.bundle:
        raise InvalidParameterError("--bundle is required (or set NEST_RT_BUNDLE)")
    return args.bundle


def add_device_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def add_weights_options(command: argparse.ArgumentParser, prefix: str) -> None:
    """--weights NAME=PATH (repeatable) and its older aliases, all into args.weights as pairs."""
    backbones = ", ".join(catalog.backbones())
    command.add_argument("--weights", action="append", default=[], type=_backbone_weights, metavar="NAME=PATH",
                         help=f"{prefix}a torchvision state dict for the backbone NAME ({backbones}); repeatable. "
                              "Default: the backbone's own weights (torchvision's ImageNet weights, downloaded or "
                              "cached as upstream; the untrained AlexNet is built from upstream's seed)")
    for alias, name in (("--vit-weights", "vit_b_32"), ("--alexnet-weights", "alexnet")):
        command.add_argument(alias, dest="weights", action="append", metavar="PATH",
                             type=lambda path, name=name: (name, Path(path)), help=f"the same as --weights {name}=PATH")


def _backbone_weights(text: str) -> tuple[str, Path]:
    name, equals, path = text.partition("=")
    if not equals or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def weights(args) -> dict[str, Path]:
    """args.weights as backbone -> path; a backbone given twice is refused."""
    chosen: dict[str, Path] = {}
    for name, path in args.weights:
        if name in chosen and chosen[name] != path:
            raise InvalidParameterError(f"--weights: two files for the {name} backbone: {chosen[name]} and {path}")
        chosen[name] = path
    return chosen
