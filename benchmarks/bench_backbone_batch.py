"""Images per backbone call: the catalog's ``images_per_call`` against other counts, per model.

    python benchmarks/bench_berg.py --cases alexnet_eeg --repeats 1   # once: writes the AlexNet bundle
    python benchmarks/bench_backbone_batch.py                        # AlexNet EEG and fsaverage, 16 vs 35

Each run is a fresh process: one model of the bundle (subject 1), one warm-up call of 4 images,
then N images of 425 x 425 in one ``encode`` call with the backbone run ``per_call`` images at a
time (the heads as always). Runs of the counts are interleaved, repeat after repeat. Reported:
images/s, median (min-max), and the process's peak RSS. A benchmark, not a test: nothing in it
asserts a timing.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO_ROOT / "benchmarks" / "results" / "work_berg" / "alexnet" / "bundle"
RESULTS = REPO_ROOT / "benchmarks" / "results" / "backbone_batch.json"
IMAGE_SIZE = 425


def one_run(bundle: str, model_id: str, per_call: int, count: int) -> dict:
    """In the child process: one model, its backbone run ``per_call`` images per call."""
    import numpy as np

    from nest_rt import BERG
    berg = BERG(bundle, num_threads=2)
    model = berg.get_encoding_model(model_id, subject=1)
    for backbone in berg._nest._backbones.values():
        backbone.batch_size = per_call
    images = np.random.default_rng(0).integers(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    berg.encode(model, images[:4], show_progress=False)
    started = time.perf_counter()
    berg.encode(model, images, show_progress=False)
    seconds = time.perf_counter() - started
    return {"images_per_s": count / seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--models", nargs="+", default=["eeg-things_eeg_2-alexnet", "fmri-nsd_fsaverage-alexnet"])
    parser.add_argument("--per-call", type=int, nargs="+", default=[16, 35])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "PER_CALL", "IMAGES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        model_id, per_call, count = args.child
        print(json.dumps(one_run(str(args.bundle), model_id, int(per_call), int(count))))
        return
    if not (args.bundle / "bundle.json").is_file():
        sys.exit(f"--bundle {args.bundle}: no bundle there; run benchmarks/bench_berg.py once (see above)")
    runs: dict[str, dict[int, list[dict]]] = {m: {n: [] for n in args.per_call} for m in args.models}
    for repeat in range(args.repeats):
        for model_id in args.models:
            for per_call in args.per_call:
                child = subprocess.run([sys.executable, __file__, "--bundle", str(args.bundle), "--child", model_id,
                                        str(per_call), str(args.images)], check=True, capture_output=True, text=True)
                runs[model_id][per_call].append(json.loads(child.stdout.splitlines()[-1]))
                print(f"[bench] {model_id} {per_call} per call, repeat {repeat + 1}: "
                      f"{runs[model_id][per_call][-1]['images_per_s']:.1f} images/s", flush=True)
    print(f"| model | images per backbone call | images/s, median (min-max) of {args.repeats} | peak RSS MB |")
    print("|---|---|---|---|")
    for model_id, by_count in runs.items():
        for per_call, found in by_count.items():
            speeds = [run["images_per_s"] for run in found]
            print(f"| {model_id} | {per_call} | {statistics.median(speeds):.1f} ({min(speeds):.1f}-{max(speeds):.1f}) | "
                  f"{statistics.median(run['peak_rss_mb'] for run in found):.0f} |")
    RESULTS.write_text(json.dumps({"config": vars(args) | {"bundle": str(args.bundle)}, "runs": runs}, indent=1,
                                  default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
