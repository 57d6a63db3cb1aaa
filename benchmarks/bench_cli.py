"""``nest-rt encode`` over a folder of JPEG files vs upstream's way of running the same models.

    python benchmarks/bench_cli.py            # ~35 min on 2 cores; writes benchmarks/results/cli.json
    python benchmarks/bench_cli.py --cases eeg_nest_rt memory_1000   # rerun some, update cli.json

Cases (2 threads each, every run in a fresh process, one run per case: each lasts minutes):
- fMRI fwRF, subject 1, five ROIs (V1, V2, V3, hV4, FFA-1 at subject 1's real voxel counts):
  ``nest-rt encode FOLDER --model fwrf:roi=...`` over 2,000 JPEG files (425 x 425, as NSD) vs
  upstream's loop: decode every file into one array (upstream's encode takes an array), then
  per ROI load the torch model and encode (batches of 100, np.append).
- EEG, all 10 subjects: ``--model eeg:subjects=all`` over the 2,000 files vs upstream's loop of
  ten runs (load ViT + scikit-learn objects, encode) on the first 200 files (upstream needs
  ~20 min per 1,000 images for ten subjects here; images/s does not depend on the count).
- Memory: peak RSS of ``nest-rt encode`` (fwRF V1) over 1,000 and 20,000 files (the 2,000
  files listed ten times through symlinks), and of fsaverage with all vertices over 1,000.
Upstream-style timings include JPEG decoding, as ``nest-rt encode``'s do.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import log  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = REPO_ROOT / "benchmarks" / "results" / "work_cli"
VIT_WORK_DIR = REPO_ROOT / "benchmarks" / "results" / "work_vit"
RESULT_FILE = REPO_ROOT / "benchmarks" / "results" / "cli.json"
THREADS = 2
FILES = 2000
IMAGE_SIZE = 425
FWRF_ROIS = ["V1", "V2", "V3", "hV4", "FFA-1"]
UPSTREAM_FWRF_FILES = 500
UPSTREAM_EEG_FILES = 200
MEMORY_COUNTS = (1000, 20000)


# -- workers (each runs in its own process) ------------------------------------------------------
def worker_encode(args) -> dict:
    """``nest-rt encode`` itself, in process so that its peak RSS is this process's."""
    wall, record, out = _common.encode_in_process(json.loads(args.command))
    shutil.rmtree(out)
    return {"wall_s": wall, "images": record["inputs"]["count"], "outputs": len(record["outputs"])}


def decode_files(paths: list[str]):
    """What an upstream user does first: every image into one uint8 [N, 3, S, S] array."""
    import numpy as np
    from PIL import Image
    array = np.empty((len(paths), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            array[index] = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    return array


def start_upstream(args):
    """Both upstream-style workers begin alike: torch's threads, then the clock starts and every
    file is decoded into one array. Returns (start time, images)."""
    import torch
    torch.set_num_threads(THREADS)
    paths = image_paths(Path(args.folder))[:int(args.count)]
    return time.perf_counter(), decode_files(paths)


def worker_upstream_fwrf(args) -> dict:
    from bench_fwrf import upstream_encode
    from nest_rt_export.fwrf_torch import FwrfReference
    from nest_rt_export.toolkit import fwrf_files, load_checkpoint
    start, images = start_upstream(args)
    for roi in FWRF_ROIS:
        checkpoints = [load_checkpoint(p) for p in fwrf_files(Path(args.toolkit), 1, roi)["weights"]]
        model = FwrfReference.from_checkpoints(checkpoints, 1)
        upstream_encode(model, images, {})
        del model, checkpoints
    return {"wall_s": time.perf_counter() - start, "images": len(images), "outputs": len(FWRF_ROIS)}


def worker_upstream_eeg(args) -> dict:
    import gc

    from bench_vit import upstream_encode, upstream_load
    start, images = start_upstream(args)
    for subject in range(1, 11):
        model = upstream_load("eeg", Path(args.toolkit), subject)
        upstream_encode(model, images, {})
        del model
        gc.collect()  # as a new upstream process per subject would start empty
    return {"wall_s": time.perf_counter() - start, "images": len(images), "outputs": 10}


WORKERS = {"encode": worker_encode, "upstream_fwrf": worker_upstream_fwrf, "upstream_eeg": worker_upstream_eeg}


def image_paths(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.jpg"))


# -- setup -----------------------------------------------------------------------------------------
def prepare() -> dict:
    """2,000 JPEG files, a 20,000-file folder of symlinks to them, an fwRF bundle with five ROIs,
    and bench_vit's ten-subject EEG toolkit and bundle (built by bench_vit when missing)."""
    import numpy as np
    from PIL import Image
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    folder = WORK_DIR / f"jpeg_{FILES}"
    if len(image_paths(folder)) != FILES:
        from nest_rt_export.synthetic import synthetic_images
        log(f"writing {FILES} JPEG files to {folder} (once)")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for start in range(0, FILES, 100):
            for offset, image in enumerate(synthetic_images(100, IMAGE_SIZE, seed=start)):
                Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(
                    folder / f"image_{start + offset:05d}.jpg", quality=90)
    large = WORK_DIR / f"jpeg_{MEMORY_COUNTS[1]}"
    if len(image_paths(large)) != MEMORY_COUNTS[1]:
        shutil.rmtree(large, ignore_errors=True)
        for copy in range(MEMORY_COUNTS[1] // FILES):
            (large / f"copy_{copy:02d}").mkdir(parents=True)
            for path in image_paths(folder):
                os.symlink(path, large / f"copy_{copy:02d}" / Path(path).name)
    toolkit, bundle = WORK_DIR / "toolkit_fwrf", WORK_DIR / "bundle_fwrf"
    if not (toolkit / "encoding_models").is_dir():
        from nest_rt_export.synthetic import write_toolkit
        log("writing a five-ROI fwRF toolkit (once)")
        write_toolkit(toolkit, subjects=[1], rois=FWRF_ROIS)
    from nest_rt.bundle import BUNDLE_FORMAT
    manifest = bundle / "bundle.json"
    if not manifest.is_file() or json.loads(manifest.read_text())["format"] != BUNDLE_FORMAT:
        from nest_rt_export.exporter import export_bundle
        log("exporting it (once per bundle format)")
        export_bundle(toolkit, bundle, overwrite=True, log=log)
    import bench_vit
    vit = bench_vit.prepare_work_dir(VIT_WORK_DIR, [], reuse=True)
    return {"folder": folder, "large": large, "fwrf_toolkit": toolkit, "fwrf_bundle": bundle,
            "eeg_toolkit": vit["toolkit_current"], "eeg_bundle": vit["bundle_current"]}


def worker_setup(args) -> dict:
    """Setup runs in a worker too: Linux carries a parent's peak RSS into its children's
    ru_maxrss, so the parent must never load torch or models itself."""
    return {key: str(value) for key, value in prepare().items()} | {"images": 0, "wall_s": 1.0}


WORKERS["setup"] = worker_setup


def encode_command(inputs: str, bundle: str, model: str, name: str) -> str:
    return json.dumps(["encode", inputs, "--bundle", bundle, "--model", model, "--threads", str(THREADS),
                       "--out", str(WORK_DIR / f"out_{name}"), "--no-progress"])


def run(kind: str, **options) -> dict:
    result = _common.run_worker(Path(__file__).resolve(), kind, THREADS, **options)
    result["images_per_s"] = result["images"] / result["wall_s"]
    log(f"{kind} {options.get('command', '')[:80]}: {result['images']} images in {result['wall_s']:.1f} s "
        f"({result['images_per_s']:.2f} img/s), peak RSS {result['peak_rss_mb']:.0f} MB")
    return result


def cases(paths: dict) -> dict:
    """Each case: (worker kind, its options)."""
    rois = ",".join(FWRF_ROIS)
    first_1000 = str(Path(paths["folder"]) / "image_00???.jpg")
    return {
        "fwrf_nest_rt": ("encode", {"command": encode_command(paths["folder"], paths["fwrf_bundle"],
                                                              f"fwrf:subjects=1:roi={rois}", "fwrf")}),
        "fwrf_upstream": ("upstream_fwrf", {"folder": paths["folder"], "toolkit": paths["fwrf_toolkit"],
                                            "count": UPSTREAM_FWRF_FILES}),
        "eeg_nest_rt": ("encode", {"command": encode_command(paths["folder"], paths["eeg_bundle"],
                                                             "eeg:subjects=all", "eeg")}),
        "eeg_upstream": ("upstream_eeg", {"folder": paths["folder"], "toolkit": paths["eeg_toolkit"],
                                          "count": UPSTREAM_EEG_FILES}),
        "memory_1000": ("encode", {"command": encode_command(first_1000, paths["fwrf_bundle"],
                                                             "fwrf:subjects=1:roi=V1", "memory_1000")}),
        "memory_20000": ("encode", {"command": encode_command(paths["large"], paths["fwrf_bundle"],
                                                              "fwrf:subjects=1:roi=V1", "memory_20000")}),
        # the largest outputs: 2 x 163,842 vertices per image (1.3 MB)
        "memory_fsaverage_1000": ("encode", {"command": encode_command(
            first_1000, paths["eeg_bundle"], "fsaverage:subjects=1", "memory_fsaverage")}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", help="run only these cases and update them in cli.json")
    args = parser.parse_args()
    paths = run("setup")
    plan = cases(paths)
    unknown = set(args.cases or []) - set(plan)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; cases: {sorted(plan)}")
    results = json.loads(RESULT_FILE.read_text()) if args.cases and RESULT_FILE.is_file() else {}
    environment = _common.environment(THREADS)
    for name in args.cases or plan:
        kind, options = plan[name]
        # with --cases, rows of earlier runs stay: each row says which code it measured
        results[name] = run(kind, **options) | {"git": environment["git"]}
    for case in ("fwrf", "eeg"):
        if f"{case}_nest_rt" in results and f"{case}_upstream" in results:
            results[f"{case}_speedup"] = (results[f"{case}_nest_rt"]["images_per_s"]
                                          / results[f"{case}_upstream"]["images_per_s"])
    results["environment"] = environment  # of this invocation; rows run earlier carry their own "git"
    RESULT_FILE.write_text(json.dumps(results, indent=1, default=str))
    log(f"written to {RESULT_FILE}")
    for name, result in results.items():
        if isinstance(result, dict) and "wall_s" in result:
            log(f"{name:>22}: {result['images']:>6} images, {result['images_per_s']:6.2f} img/s, "
                f"peak RSS {result['vm_hwm_mb']:.0f} MB (VmHWM; ru_maxrss {result['peak_rss_mb']:.0f})")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        _common.worker_main(sys.argv[1:], WORKERS, ["--command", "--folder", "--toolkit", "--count"])
    else:
        main()
