"""nest-rt plot: PNG plots of an encode run's responses."""
from __future__ import annotations

from pathlib import Path

NAME = "plot"
HELP = "PNG plots of an encode run (needs matplotlib)"


def add_arguments(parser) -> None:
    parser.add_argument("run", type=Path, help="an encode output folder")
    parser.add_argument("--out", type=Path, help="folder for the PNG files (default: RUN/plots)")
    parser.add_argument("--outputs", nargs="+", help="output names from run.json (default: all)")
    parser.add_argument("--images", type=int, nargs="+", help="rows to show with their thumbnails (up to 8)")
    parser.add_argument("--max-images", type=int, default=200, help="rows read per output (default 200)")


def run(args) -> None:
    from ..plots import plot_run
    for path in plot_run(args.run, args.out or args.run / "plots", outputs=args.outputs, images=args.images,
                         max_images=args.max_images):
        print(path)
