"""Side-by-side benchmark of the fwRF model: nest_rt (onnxruntime) vs upstream's torch path.

Run from the repository root:

    python benchmarks/bench_fwrf.py             # full run: V1 and lateral, 3 repeats, 200 images
    python benchmarks/bench_fwrf.py --quick     # smoke test: 1 repeat, 40 images

Every measurement runs in a fresh worker process (this same file with ``--worker``), so peak
RSS belongs to one run only and no path benefits from another's warm caches. The nest_rt worker
never imports torch. See benchmarks/README.md for what each number means.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import _common
from _common import current_rss_mb, exporter_source_sha256, log, spread

# -- what is benchmarked ----------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK_DIR = REPO_ROOT / "benchmarks" / "results" / "work"
DEFAULT_RESULT_FILE = REPO_ROOT / "benchmarks" / "results" / "fwrf.json"

SUBJECT = 1
THREADS = 2
IMAGE_SIZE = 425          # NSD images are 425 x 425; both paths resize them to 227
IMAGE_SEED = 2024
UPSTREAM_BATCH = 100      # upstream's fixed batch size
UPSTREAM_STAGES = ("preprocess", "encoder", "readout", "np_append")  # timed separately, in this order
TOOLKIT_ROIS = ["V1", "lateral"]
ROI_SHAPES = {"V1": {"voxels": 1350, "encoders": 1},      # subject 1's real voxel counts;
              "lateral": {"voxels": 7799, "encoders": 2}}  # lateral ships as two split checkpoints

ENCODER_MACS = 706_584_576             # NEST_REFERENCE §2.2
READOUT_MACS_PER_VOXEL = 390_656       # NEST_REFERENCE §2.4
SETUP_FORMAT = 1


def flops_per_image(roi: str) -> int:
    shape = ROI_SHAPES[roi]
    return 2 * ENCODER_MACS * shape["encoders"] + 2 * READOUT_MACS_PER_VOXEL * shape["voxels"]


# =============================================================================================
# Workers: each runs in its own process and prints one JSON result line (_common.emit_result).
# =============================================================================================
def worker_nest_rt(args) -> dict:
    """Load with NEST(), answer one image, then time encode() of all images."""
    imports_started = time.perf_counter()
    import numpy as np
    from nest_rt import NEST
    import_s = time.perf_counter() - imports_started

    images = np.load(args.images_file)
    baseline_rss = current_rss_mb()
    start = time.perf_counter()
    nest = NEST(args.bundle, num_threads=THREADS)
    model = nest.get_encoding_model("fmri", "nsd", "fwrf", subject=SUBJECT, roi=args.roi, device="cpu")
    loaded = time.perf_counter()
    nest.encode(model, images[:1], return_metadata=False, show_progress=False)
    first_response = time.perf_counter()

    responses = nest.encode(model, images, return_metadata=False, show_progress=False)
    encode_s = time.perf_counter() - first_response
    _save_responses(args, responses)
    return {"load_s": loaded - start, "load_to_first_response_s": first_response - start,
            "encode_s": encode_s, "import_s": import_s, "baseline_rss_mb": baseline_rss,
            "batch_size": model.batch_size, "torch_imported": "torch" in sys.modules}


def worker_upstream(args) -> dict:
    """Upstream's fwRF path: torch checkpoints, whole-stimulus resize, batches of 100, np.append."""
    imports_started = time.perf_counter()
    import numpy as np
    import torch
    import torchvision  # noqa: F401  (upstream imports it; counted with the other imports)
    from nest_rt_export.fwrf_torch import FwrfReference
    from nest_rt_export.toolkit import fwrf_files, load_checkpoint
    import_s = time.perf_counter() - imports_started

    torch.set_num_threads(THREADS)
    images = np.load(args.images_file)
    baseline_rss = current_rss_mb()
    start = time.perf_counter()
    weight_files = fwrf_files(Path(args.toolkit), SUBJECT, args.roi)["weights"]
    checkpoints = [load_checkpoint(path) for path in weight_files]
    model = FwrfReference.from_checkpoints(checkpoints, SUBJECT)
    del checkpoints  # upstream keeps only the modules
    loaded = time.perf_counter()
    upstream_encode(model, images[:1], {})
    first_response = time.perf_counter()

    breakdown: dict[str, float] = {}
    responses = upstream_encode(model, images, breakdown)
    encode_s = time.perf_counter() - first_response
    _save_responses(args, responses)
    return {"load_s": loaded - start, "load_to_first_response_s": first_response - start,
            "encode_s": encode_s, "import_s": import_s, "baseline_rss_mb": baseline_rss,
            "batch_size": UPSTREAM_BATCH, "breakdown_s": breakdown, "torch_imported": True}


def upstream_encode(model, images, breakdown: dict):
    """What upstream's fwRF encode does; ``breakdown`` collects seconds per stage."""
    import numpy as np
    import torch
    from torchvision import transforms

    def timed(stage, function, *inputs):
        start = time.perf_counter()
        result = function(*inputs)
        breakdown[stage] = breakdown.get(stage, 0.0) + time.perf_counter() - start
        return result

    # The whole stimulus is resized and scaled before the first batch (memory grows with N).
    stimulus = timed("preprocess", lambda: transforms.Resize((227, 227))(torch.from_numpy(images))
                     .to(torch.float32) / 255)
    responses = None
    with torch.no_grad():
        for start in range(0, len(stimulus), UPSTREAM_BATCH):
            batch = stimulus[start:start + UPSTREAM_BATCH]
            blocks = []
            for encoder, readout in zip(model.encoders, model.readouts):
                features = timed("encoder", encoder, batch)
                blocks.append(timed("readout", readout, features))
            block = torch.cat(blocks, dim=1).numpy().astype(np.float32)
            # Upstream grows the result with np.append: every batch copies all earlier rows.
            responses = block if responses is None else timed(
                "np_append", lambda: np.append(responses, block, axis=0))
    return responses


def worker_gemm(args) -> dict:
    """float32 GEMM GFLOP/s at THREADS threads: the practical ceiling of this CPU."""
    return _common.worker_gemm(THREADS)


def _save_responses(args, responses) -> None:
    """Kept so that the parent can check both paths compute the same responses."""
    import numpy as np
    if args.responses_file:
        np.save(args.responses_file, responses)


def worker_setup(args) -> dict:
    """Runs in a worker too: the parent must stay small, or every child's ru_maxrss inherits its peak."""
    counts = [int(count) for count in args.image_counts.split(",")]
    paths = prepare_work_dir(Path(args.work_dir), counts)
    return {"toolkit": str(paths["toolkit"]), "bundle": str(paths["bundle"]),
            "images": {str(count): str(path) for count, path in paths["images"].items()}}


WORKERS = {"nest_rt": worker_nest_rt, "upstream": worker_upstream, "gemm": worker_gemm,
           "setup": worker_setup}


def run_worker_main(argv: list[str]) -> None:
    _common.worker_main(argv, WORKERS, ["--roi", "--images-file", "--bundle", "--toolkit", "--responses-file",
                                        "--work-dir", "--image-counts"])


# =============================================================================================
# Setup: synthetic toolkit, exported bundle and image files, cached in the work dir.
# =============================================================================================
def prepare_work_dir(work_dir: Path, image_counts: list[int]) -> dict:
    work_dir.mkdir(parents=True, exist_ok=True)
    toolkit_dir, bundle_dir = work_dir / "toolkit", work_dir / "bundle"
    marker = work_dir / "setup.json"
    # The exporter's source is part of the key: a changed exporter must not be measured on a stale bundle.
    wanted = {"format": SETUP_FORMAT, "subjects": [SUBJECT], "rois": TOOLKIT_ROIS,
              "exporter_sha256": exporter_source_sha256()}
    if not (marker.is_file() and json.loads(marker.read_text()) == wanted
            and (bundle_dir / "bundle.json").is_file()):
        from nest_rt_export.exporter import export_bundle
        from nest_rt_export.synthetic import write_toolkit
        log(f"writing synthetic toolkit to {toolkit_dir} (once)")
        write_toolkit(toolkit_dir, subjects=[SUBJECT], rois=TOOLKIT_ROIS)
        log(f"exporting bundle to {bundle_dir} (once)")
        export_bundle(toolkit_dir, bundle_dir, overwrite=True, log=log)
        marker.write_text(json.dumps(wanted))
    return {"toolkit": toolkit_dir, "bundle": bundle_dir,
            "images": {count: image_file(work_dir, count) for count in sorted(set(image_counts))}}


def image_file(work_dir: Path, count: int) -> Path:
    """uint8 [count, 3, 425, 425]; one file per count so a worker loads exactly what it encodes."""
    return _common.image_file(work_dir, count, IMAGE_SIZE, IMAGE_SEED)


# =============================================================================================
# Orchestration
# =============================================================================================
def run_worker(kind: str, show_log: bool = False, **options) -> dict:
    return _common.run_worker(Path(__file__).resolve(), kind, THREADS, show_log=show_log, **options)


def measure(path: str, roi: str, count: int, setup: dict, work_dir: Path, repeat: int) -> dict:
    responses_file = work_dir / "responses" / f"{path}_{roi}_{count}.npy"
    responses_file.parent.mkdir(exist_ok=True)
    options = {"roi": roi, "images_file": setup["images"][str(count)], "responses_file": responses_file}
    options.update({"bundle": setup["bundle"]} if path == "nest_rt" else {"toolkit": setup["toolkit"]})
    result = run_worker(path, **options)
    result.update(path=path, roi=roi, images=count, repeat=repeat,
                  images_per_s=count / result["encode_s"])
    log(f"{path:8s} {roi:8s} N={count:<5d} repeat {repeat}: {result['images_per_s']:.2f} img/s, "
        f"first response {result['load_to_first_response_s']:.2f} s, "
        f"peak RSS {result['peak_rss_mb']:.0f} MB ({result['worker_wall_s']:.0f} s wall, "
        f"{100 * result['other_cpu_share']:.0f} % CPU used by other processes)")
    return result


def plan_runs(args) -> list[tuple[str, str, int, int]]:
    """(path, roi, images, repeat), repeats interleaved so slow drift hits every path alike."""
    runs = [(path, roi, args.images, repeat)
            for repeat in range(args.repeats) for roi in args.rois for path in ("upstream", "nest_rt")]
    # One run each at the large N: peak RSS is what it shows, and RSS hardly varies run to run.
    runs += [("nest_rt", roi, args.large_images, 0) for roi in args.rois]
    if args.upstream_large and "V1" in args.rois:
        runs.append(("upstream", "V1", args.large_images, 0))
    return runs


def summarize(runs: list[dict], ceiling: float) -> list[dict]:
    rows = []
    for key in sorted({(r["roi"], r["path"], r["images"]) for r in runs},
                      key=lambda k: (k[0], k[2], k[1] != "upstream")):
        roi, path, count = key
        group = [r for r in runs if (r["roi"], r["path"], r["images"]) == key]
        throughput = spread([r["images_per_s"] for r in group])
        achieved = throughput["median"] * flops_per_image(roi) / 1e9
        rows.append({"roi": roi, "path": path, "images": count, "runs": len(group),
                     "images_per_s": throughput,
                     "load_to_first_response_s": spread([r["load_to_first_response_s"] for r in group]),
                     "import_s": spread([r["import_s"] for r in group]),
                     "peak_rss_mb": spread([r["peak_rss_mb"] for r in group]),
                     "baseline_rss_mb": spread([r["baseline_rss_mb"] for r in group]),
                     "gflops_per_image": flops_per_image(roi) / 1e9,
                     "achieved_gflops": achieved, "percent_of_ceiling": 100 * achieved / ceiling,
                     "torch_imported": sorted({r["torch_imported"] for r in group}),
                     "batch_size": sorted({r["batch_size"] for r in group}),
                     "other_cpu_share": max(r["other_cpu_share"] for r in group)})
        if path == "upstream":
            stages = sorted({stage for r in group for stage in r["breakdown_s"]})
            rows[-1]["breakdown_s"] = {stage: statistics.median(r["breakdown_s"].get(stage, 0.0) for r in group)
                                       for stage in stages}
    for row in rows:
        upstream = next((r for r in rows if r["path"] == "upstream" and r["roi"] == row["roi"]
                         and r["images"] == row["images"]), None)
        row["speedup_vs_upstream"] = (row["images_per_s"]["median"] / upstream["images_per_s"]["median"]
                                      if upstream else None)
    return rows


def compare_responses(work_dir: Path, rois: list[str], count: int) -> dict:
    """Sanity check: both paths should give the same responses (resize rounding aside)."""
    import numpy as np
    agreement = {}
    for roi in rois:
        files = [work_dir / "responses" / f"{path}_{roi}_{count}.npy" for path in ("upstream", "nest_rt")]
        if all(f.is_file() for f in files):
            upstream, nest_rt = (np.load(f).astype(np.float64) for f in files)
            agreement[roi] = {
                "max_abs_diff_over_max_abs": float(np.abs(upstream - nest_rt).max() / np.abs(upstream).max()),
                "correlation": float(np.corrcoef(upstream.ravel(), nest_rt.ravel())[0, 1])}
    return agreement


def _range(stat: dict, digits: int) -> str:
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}–{stat['max']:.{digits}f})"


def markdown_tables(rows: list[dict], main_count: int, ceiling: float, agreement: dict) -> str:
    lines = [f"fwRF, subject {SUBJECT}, {THREADS} threads, N = {main_count} images of "
             f"{IMAGE_SIZE}x{IMAGE_SIZE}; median (min–max) over runs; GEMM ceiling {ceiling:.1f} GFLOP/s",
             "",
             "| ROI | path | images/s | speed-up nest_rt/upstream | load-to-first-response s "
             "| peak RSS MB | GFLOP/s | % of ceiling |",
             "|---|---|---|---|---|---|---|---|"]
    for row in (r for r in rows if r["images"] == main_count):
        speedup = f"{row['speedup_vs_upstream']:.2f}x" if row["path"] == "nest_rt" and row[
            "speedup_vs_upstream"] else "–"
        lines.append(f"| {row['roi']} | {row['path']} | {_range(row['images_per_s'], 2)} | {speedup} "
                     f"| {_range(row['load_to_first_response_s'], 2)} | {_range(row['peak_rss_mb'], 0)} "
                     f"| {row['achieved_gflops']:.1f} | {row['percent_of_ceiling']:.0f} % |")
    lines += ["", "Peak RSS against N (the input array itself is N x 0.54 MB of uint8):", "",
              "| ROI | path | N | runs | peak RSS MB | RSS after imports and images MB | imports s "
              "| images/s |", "|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["roi"], r["path"], r["images"])):
        lines.append(f"| {row['roi']} | {row['path']} | {row['images']} | {row['runs']} "
                     f"| {row['peak_rss_mb']['median']:.0f} | {row['baseline_rss_mb']['median']:.0f} "
                     f"| {row['import_s']['median']:.2f} | {row['images_per_s']['median']:.2f} |")
    lines += ["", "Where each path's encode time goes (median seconds per run):", ""]
    for row in rows:
        if row["path"] == "upstream":
            stages = ", ".join(f"{stage} {row['breakdown_s'][stage]:.2f}" for stage in UPSTREAM_STAGES
                               if stage in row["breakdown_s"])
            lines.append(f"- upstream {row['roi']} N={row['images']}: {stages} "
                         f"(total {row['images'] / row['images_per_s']['median']:.2f})")
        else:
            batch = "/".join(str(size) for size in row["batch_size"])
            lines.append(f"- nest_rt {row['roi']} N={row['images']}: one onnxruntime graph "
                         f"(resize included), batches of {batch}, "
                         f"total {row['images'] / row['images_per_s']['median']:.2f}")
    busiest = max(rows, key=lambda r: r["other_cpu_share"])
    lines += ["", f"Other processes used at most {100 * busiest['other_cpu_share']:.0f} % of the CPU "
              "during any run (should be near 0 for trustworthy timings)."]
    lines += ["", f"Agreement of the two paths' responses at N = {main_count}:", ""]
    lines += [f"- {roi}: correlation {a['correlation']:.6f}, max |diff| / max |response| "
              f"{a['max_abs_diff_over_max_abs']:.2e}" for roi, a in agreement.items()]
    return "\n".join(lines)


def environment() -> dict:
    return _common.environment(THREADS)


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rois", nargs="+", choices=sorted(ROI_SHAPES), default=list(ROI_SHAPES))
    parser.add_argument("--repeats", type=int, default=3, help="fresh worker runs per (path, ROI)")
    parser.add_argument("--images", type=int, default=200, help="N for the throughput runs")
    parser.add_argument("--large-images", type=int, default=1000,
                        help="N of the extra nest_rt run showing peak RSS against N")
    parser.add_argument("--upstream-large", action="store_true",
                        help="also run upstream V1 at --large-images (slow, memory grows with N)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--output", type=Path,
                        help=f"raw JSON (default {DEFAULT_RESULT_FILE.relative_to(REPO_ROOT)}, "
                             "or fwrf_quick.json with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 repeat, 40 (and 80) images")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.images, args.large_images = 1, 40, 80
    _common.default_output(args, DEFAULT_RESULT_FILE)
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    work_dir = args.work_dir.resolve()
    started = time.perf_counter()
    setup = run_worker("setup", show_log=True, work_dir=work_dir,
                       image_counts=f"{args.images},{args.large_images}")

    gemm, ceiling, gemm_other_cpu_share = _common.gemm_ceiling(run_worker)

    runs = [measure(path, roi, count, setup, work_dir, repeat)
            for path, roi, count, repeat in plan_runs(args)]
    rows = summarize(runs, ceiling)
    agreement = compare_responses(work_dir, args.rois, args.images)
    report = {"config": {"rois": args.rois, "repeats": args.repeats, "images": args.images,
                         "large_images": args.large_images, "image_size": IMAGE_SIZE,
                         "upstream_batch": UPSTREAM_BATCH, "subject": SUBJECT, "quick": args.quick},
              "environment": environment(),
              "gemm_gflops": gemm, "gemm_ceiling_gflops": ceiling,
              "gemm_other_cpu_share": gemm_other_cpu_share,
              "summary": rows, "agreement": agreement,
              "runs": runs, "total_wall_s": time.perf_counter() - started}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1, default=str))
    print(markdown_tables(rows, args.images, ceiling, agreement))
    print(f"\nraw results: {args.output}")


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        run_worker_main(sys.argv[1:])
    else:
        main(sys.argv[1:])
