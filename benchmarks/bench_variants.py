"""The bundle variants for embedders, graph by graph: what ``--portable`` and ``--self-contained``
cost or save against the default bundle.

    python benchmarks/bench_variants.py            # 5 repeats, 32 images of 425 x 425
    python benchmarks/bench_variants.py --quick    # 1 repeat, 8 images; writes variants_quick.json

Setup (cached in --work-dir): a synthetic toolkit with the real-size fsaverage head of subject 1
(250 components, 327,684 vertices) on a random ViT-B/32, exported twice with --self-contained:
once as default (onnxruntime's fused kernels) and once with --portable.

Cases, each a fresh process running one graph (or the split pair) over the same images in
batches of the contract's recommended batch, after one warm-up batch:
- backbone (fused) / backbone (portable) on onnxruntime, and the portable one on OpenVINO;
- fsaverage end to end: split (backbone, then head fed the .npy weights) vs self-contained.
Reported: ms per image, median (min-max) over repeats interleaved across cases, and peak RSS.
This is a benchmark, not a test: nothing in it asserts a timing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import REPO_ROOT, log  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "variants.json"
FSAVERAGE = "fmri-nsd_fsaverage-vit_b_32"
IMAGE_SIZE = 425  # NSD's stimuli: the backbones resize them
CASES = {
    "backbone_fused_onnxruntime": ("default", "backbone", "onnxruntime"),
    "backbone_portable_onnxruntime": ("portable", "backbone", "onnxruntime"),
    "backbone_portable_openvino": ("portable", "backbone", "openvino"),
    "fsaverage_split_onnxruntime": ("default", "split", "onnxruntime"),
    "fsaverage_self_contained_onnxruntime": ("default", "self_contained", "onnxruntime"),
}


def setup(work_dir: Path) -> dict[str, Path]:
    """The two bundles, exported once per exporter source (the cache key)."""
    from nest_rt_export import exporter, synthetic_vit
    work_dir.mkdir(parents=True, exist_ok=True)
    key = _common.exporter_source_sha256()[:16]
    toolkit = work_dir / "toolkit"
    if not (toolkit / synthetic_vit.VIT_WEIGHTS_NAME).is_file():
        log("writing a synthetic toolkit: fsaverage subject 1, real size (once)")
        synthetic_vit.write_vit_toolkit(toolkit, fsaverage_subjects=[1], components=250, seed=0)
    bundles = {}
    for name, portable in (("default", False), ("portable", True)):
        bundles[name] = work_dir / f"bundle_{name}_{key}"
        if not (bundles[name] / "bundle.json").is_file():
            log(f"exporting the {name} bundle with --self-contained (once per exporter version)")
            exporter.export_bundle(toolkit, bundles[name], vit_weights=toolkit / synthetic_vit.VIT_WEIGHTS_NAME,
                                   portable=portable, self_contained=True, overwrite=True, log=log)
    return bundles


def worker_run(args) -> dict:
    """One case: ms per image over the images, after a warm-up batch."""
    import numpy as np
    bundle = Path(args.bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    entry = manifest["models"][FSAVERAGE]["graphs"]["1"]["all"]
    backbone = manifest["backbones"]["vit_b_32"]["graph"]
    images = np.load(args.images)
    run = _runner(bundle, args.what, args.engine, backbone, entry, int(args.engine_threads))
    batch = 16
    run(images[:batch])
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        responses = run(images[start:start + batch])
    seconds = time.perf_counter() - started
    return {"ms_per_image": 1000 * seconds / len(images), "output_width": int(responses.shape[1])}


def _runner(bundle: Path, what: str, engine: str, backbone: str, entry: dict, threads: int):
    """images -> the case's output, on the engine."""
    import numpy as np
    if engine == "openvino":
        import openvino
        compiled = openvino.Core().compile_model(str(bundle / backbone), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
        return lambda images: compiled({"images": images})[0]
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads

    def session(graph: str):
        return ort.InferenceSession(str(bundle / graph), options, providers=["CPUExecutionProvider"])
    if what == "backbone":
        features = session(backbone)
        return lambda images: features.run(None, {"images": images})[0]
    if what == "self_contained":
        joined = session(entry["self_contained"]["graph"])
        return lambda images: joined.run(None, {"images": images})[0]
    features, head = session(backbone), session(entry["head"])
    weights = {"pca_matrix": np.load(bundle / entry["pca_matrix"]), "pca_bias": np.load(bundle / entry["pca_bias"]),
               "coef": np.load(bundle / entry["regression_coef"]),
               "intercept": np.load(bundle / entry["regression_intercept"])}
    return lambda images: head.run(None, {"features": features.run(None, {"images": images})[0], **weights})[0]


def main(argv: list[str]) -> None:
    if argv[:1] == ["--worker"]:
        _common.worker_main(argv, {"run": worker_run}, ["--bundle", "--what", "--engine", "--images", "--engine-threads"])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 8 images")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "work_variants")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.images = 1, 8
    _common.default_output(args, RESULTS)
    bundles = setup(args.work_dir)
    images = _common.image_file(args.work_dir, args.images, IMAGE_SIZE, seed=1)
    runs = {case: [] for case in CASES}
    for repeat in range(args.repeats):
        for case, (bundle, what, engine) in CASES.items():
            result = _common.run_worker(Path(__file__), "run", args.threads, bundle=bundles[bundle], what=what,
                                        engine=engine, images=images, engine_threads=args.threads)
            runs[case].append(result)
            log(f"repeat {repeat + 1}/{args.repeats} {case}: {result['ms_per_image']:.1f} ms per image, "
                f"peak RSS {result['peak_rss_mb']:.0f} MB")
    summary = {case: {"ms_per_image": _common.spread([r["ms_per_image"] for r in results]),
                      "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results)}
               for case, results in runs.items()}
    print(f"\n{args.images} images of {IMAGE_SIZE} x {IMAGE_SIZE}, {args.threads} threads, {args.repeats} repeats\n")
    print("| case | ms per image, median (min-max) | vs the first of its group | peak RSS MB |")
    print("|---|---|---|---|")
    for case, stats in summary.items():
        first = summary["backbone_fused_onnxruntime" if case.startswith("backbone") else "fsaverage_split_onnxruntime"]
        times = stats["ms_per_image"]
        print(f"| {case} | {times['median']:.1f} ({times['min']:.1f}-{times['max']:.1f}) | "
              f"{times['median'] / first['ms_per_image']['median']:.2f}x | {stats['peak_rss_mb']:.0f} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"environment": _common.environment(args.threads, packages=(
        "nest-rt", "onnxruntime", "openvino", "numpy")), "images": args.images, "image_size": IMAGE_SIZE,
        "summary": summary, "runs": runs}, indent=1))
    log(f"raw results written to {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
