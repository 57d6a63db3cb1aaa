"""Side-by-side benchmark of the ViT-B/32 models: nest_rt (onnxruntime) vs upstream's torch +
scikit-learn path, at real sizes (460,800 features, 250 PCA components, 1000 in the legacy PCA
file, 63 x 140 x 4 EEG outputs, 2 x 163,842 fsaverage vertices).

Run from the repository root:

    python benchmarks/bench_vit.py             # full run: every case, 3 repeats, 100 images (~20 min)
    python benchmarks/bench_vit.py --quick     # smoke test: 1 repeat, 8 images, 2 EEG subjects

Every measurement runs in a fresh worker process (this same file with ``--worker``), so peak
RSS belongs to one run only. The nest_rt worker never imports torch. The first run writes two
synthetic toolkits and their bundles (about 15 GB, 10-15 minutes) into the work dir and reuses
them afterwards. See benchmarks/README.md for what each number means.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import _common
from _common import REPO_ROOT, current_rss_mb, exporter_source_sha256, log, spread

DEFAULT_WORK_DIR = REPO_ROOT / "benchmarks" / "results" / "work_vit"
DEFAULT_RESULT_FILE = REPO_ROOT / "benchmarks" / "results" / "vit.json"

THREADS = 2
IMAGE_SIZE = 425          # NSD's size: both paths resize to 256 and crop 224
IMAGE_SEED = 2024
UPSTREAM_BATCH = 100      # upstream's fixed batch size
EEG = "eeg-things_eeg_2-vit_b_32"
FSAVERAGE = "fmri-nsd_fsaverage-vit_b_32"
EEG_SUBJECTS = list(range(1, 11))   # the current toolkit holds all ten EEG subjects
FSAVERAGE_SUBJECT = 1
ROI = "V1v"
COMPONENTS = 250
LEGACY_COMPONENTS = 1000
FEATURES = 460_800
EEG_OUTPUTS = 4 * 63 * 140
FSAVERAGE_VERTICES = 163_842
SETUP_FORMAT = 2  # 2: the current-layout bundle also holds the int8 backbone

# What each case is: which toolkit/bundle it reads, and what the 10-subject case covers.
CASES = {
    "eeg": "EEG subject 1 (current layout; nest_rt: model-ID API)",
    "eeg_legacy": "EEG subject 1, legacy layout (shared scaler, 1000-component PCA; nest_rt: legacy API)",
    "fsaverage": "fsaverage subject 1, all 2 x 163,842 vertices",
    "fsaverage_roi": f"fsaverage subject 1, selection {{'roi': '{ROI}'}}",
    "eeg_x10": "EEG subjects 1..10 on the same images (upstream: 10 separate runs; nest_rt: encode_many)",
    "eeg_int8": "EEG subject 1 with nest_rt's opt-in int8 backbone (nest_rt only; compared with upstream's "
                "and nest_rt's fp32 eeg rows)",
}
NEST_RT_ONLY = {"eeg_int8": "eeg"}  # case -> the case whose upstream run it is compared with
INT8_SPEEDUP_GOAL, INT8_CORRELATION_GOAL = 2.5, 0.999
UPSTREAM_STAGES = ("preprocess", "backbone", "scaler", "pca", "regression", "np_append")

# Nominal FLOPs per image (NEST_REFERENCE §3.2, §3.6): the backbone, and 2 x D x K per PCA and
# 2 x K x outputs per regression, counting what each path actually executes.
BACKBONE_FLOPS = 2 * (115_605_504 + 12 * 357_734_400)  # 8.82 GFLOP


def head_flops(components: int, outputs: int) -> int:
    return 2 * FEATURES * components + 2 * COMPONENTS * outputs


def executed_flops_per_image(row: dict) -> int:
    """Upstream recomputes the backbone for every subject and (legacy) all 1000 components;
    nest_rt computes the backbone once per batch and 250 components."""
    subjects, outputs = len(row["subjects"]), row["outputs_per_subject"]
    components = LEGACY_COMPONENTS if (row["case"] == "eeg_legacy" and row["path"] == "upstream") else COMPONENTS
    backbones = subjects if row["path"] == "upstream" else 1
    return backbones * BACKBONE_FLOPS + subjects * head_flops(components, outputs)


# =============================================================================================
# Workers: each runs in its own process and prints one JSON result line.
# =============================================================================================
def worker_nest_rt(args) -> dict:
    """Load with NEST(), answer one image, then time encode()/encode_many() of all images."""
    imports_started = time.perf_counter()
    import numpy as np
    from nest_rt import NEST
    import_s = time.perf_counter() - imports_started

    images = np.load(args.images_file)
    subjects = [int(s) for s in args.subjects.split(",")]
    baseline_rss = current_rss_mb()
    start = time.perf_counter()
    nest = NEST(args.bundle, num_threads=THREADS, precision="int8" if args.case == "eeg_int8" else "fp32")
    if args.case == "eeg_legacy":
        models = [nest.get_encoding_model("eeg", "things_eeg_2", "vit_b_32", subjects[0], device="cpu")]
    elif args.case in ("eeg", "eeg_x10", "eeg_int8"):
        models = [nest.get_encoding_model(EEG, subject=s, device="cpu") for s in subjects]
    else:
        selection = {"roi": ROI} if args.case == "fsaverage_roi" else None
        models = [nest.get_encoding_model(FSAVERAGE, subject=subjects[0], selection=selection, device="cpu")]
    loaded = time.perf_counter()
    rss_loaded = current_rss_mb()

    def encode(stimulus):
        if len(models) == 1:
            return [nest.encode(models[0], stimulus, return_metadata=False, show_progress=False)]
        return nest.encode_many(models, stimulus, show_progress=False)

    encode(images[:1])
    first_response = time.perf_counter()
    responses = encode(images)
    encode_s = time.perf_counter() - first_response
    _save_responses(args, responses[-1])
    head_ms = _head_ms_per_image(models[0], images) if args.case.startswith("fsaverage") else None
    return {"head_ms_per_image": head_ms, "load_s": loaded - start, "load_to_first_response_s": first_response - start,
            "encode_s": encode_s, "import_s": import_s, "baseline_rss_mb": baseline_rss,
            "rss_after_load_mb": rss_loaded, "outputs_per_subject": models[0].outputs,
            "batch_size": models[0].batch_size, "torch_imported": "torch" in sys.modules}


def _head_ms_per_image(model, images) -> float:
    """The head alone (PCA projection + the selected regression columns) on one head batch: the
    backbone's features are computed once into the runtime's shared cache, which every later
    run_batch on it reuses, as encode_many does for a second model on the same images."""
    import numpy as np
    batch, shared, seconds = images[:model.batch_size], {}, []
    model.run_batch(batch, "cpu", shared)
    for _ in range(5):
        started = time.perf_counter()
        model.run_batch(batch, "cpu", shared)
        seconds.append(time.perf_counter() - started)
    return 1000 * float(np.median(seconds)) / len(batch)


def worker_upstream(args) -> dict:
    """Upstream's path: one run per subject (load the ViT and the subject's scikit-learn objects,
    then encode); for several subjects the runs follow one another in this process."""
    imports_started = time.perf_counter()
    import gc

    import numpy as np
    import sklearn  # noqa: F401  (upstream imports it; counted with the other imports)
    import torch
    import torchvision  # noqa: F401
    import_s = time.perf_counter() - imports_started

    torch.set_num_threads(THREADS)
    images = np.load(args.images_file)
    subjects = [int(s) for s in args.subjects.split(",")]
    baseline_rss = current_rss_mb()
    breakdown: dict[str, float] = {}
    runs = []
    for subject in subjects:
        start = time.perf_counter()
        model = upstream_load(args.case, Path(args.toolkit), subject)
        loaded = time.perf_counter()
        rss_loaded = current_rss_mb()
        upstream_encode(model, images[:1], {})
        first_response = time.perf_counter()
        responses = upstream_encode(model, images, breakdown)
        encode_s = time.perf_counter() - first_response
        runs.append({"subject": subject, "load_s": loaded - start,
                     "load_to_first_response_s": first_response - start, "encode_s": encode_s,
                     "rss_after_load_mb": rss_loaded, "rss_after_encode_mb": current_rss_mb()})
        if subject == subjects[-1]:
            _save_responses(args, responses)
        outputs = model["outputs"]
        # The next "run" starts from nothing, as a new upstream process would. The feature
        # extractor (an FX GraphModule) sits in reference cycles: without gc.collect() each dropped
        # model (ViT + PCA, ~340 MB) lingers until the cyclic collector happens to run.
        del model, responses
        gc.collect()
    return {"load_s": sum(r["load_s"] for r in runs),
            "load_to_first_response_s": sum(r["load_to_first_response_s"] for r in runs),
            "encode_s": sum(r["encode_s"] for r in runs), "import_s": import_s,
            "baseline_rss_mb": baseline_rss, "rss_after_load_mb": max(r["rss_after_load_mb"] for r in runs),
            "outputs_per_subject": outputs, "batch_size": UPSTREAM_BATCH, "breakdown_s": breakdown,
            "per_subject": runs, "torch_imported": True}


def upstream_load(case: str, toolkit_dir: Path, subject: int) -> dict:
    """What upstream's get_encoding_model builds: the ViT feature extractor (weights read from
    disk on every load) and scikit-learn objects whose fitted attributes are set from the
    toolkit's pickled dicts, read with np.load(allow_pickle=True) as upstream does (these files
    were written by this benchmark's setup)."""
    import numpy as np
    from nest_rt_export.synthetic_vit import VIT_WEIGHTS_NAME
    from nest_rt_export.toolkit import LAYOUT_CURRENT, LAYOUT_LEGACY, eeg_files, head_files
    from nest_rt_export import backbones
    from nest_rt_export.head_reference import sklearn_pca, sklearn_regression, sklearn_scaler

    def read(path):
        return np.load(path, allow_pickle=True).item()

    vit = backbones.get("vit_b_32")
    model = {"features": vit.reference(vit.network(toolkit_dir / VIT_WEIGHTS_NAME)).eval(), "case": case}
    if case == "eeg_legacy":
        files = eeg_files(toolkit_dir, subject, LAYOUT_LEGACY)
        model["scaler"] = sklearn_scaler(read(files["scaler"]))
        model["pca"] = sklearn_pca(read(files["pca"]))  # all 1000 components; [:, :250] after transform
        regressions = read(files["regression"])
        model["regressions"] = [sklearn_regression(regressions[f"rep-{r}"]) for r in range(1, 5)]
        read(files["metadata"])  # the legacy model dict carries ch_names and times
    elif case in ("eeg", "eeg_x10"):
        weights = read(eeg_files(toolkit_dir, subject, LAYOUT_CURRENT)["weights"])
        model["scaler"] = sklearn_scaler(weights["scaler_param"])
        model["pca"] = sklearn_pca(weights["pca_param"])
        model["regressions"] = [sklearn_regression(weights["reg_param"][f"rep-{r}"]) for r in range(1, 5)]
    else:
        files = head_files(toolkit_dir, FSAVERAGE, subject)
        weights = read(files["weights"])
        model["scaler"] = sklearn_scaler(weights["scaler_param"])
        model["pca"] = sklearn_pca(weights["pca_param"])
        regressions = [weights["lh_reg_param"], weights["rh_reg_param"]]
        if case == "fsaverage_roi":  # keep the ROI's rows only (NEST_REFERENCE §3.8)
            rois = read(files["metadata"])["fmri"]
            rows = [np.asarray(rois[f"{h}_fsaverage_rois"][ROI]) for h in ("lh", "rh")]
            regressions = [{**params, "coef_": params["coef_"][sel], "intercept_": params["intercept_"][sel]}
                           for params, sel in zip(regressions, rows)]
        model["regressions"] = [sklearn_regression(params) for params in regressions]
    model["outputs"] = sum(len(r.intercept_) for r in model["regressions"])
    return model


def upstream_encode(model: dict, images, breakdown: dict):
    """Upstream's encode of one subject: the whole stimulus transformed up front, batches of 100
    through the feature extractor, StandardScaler -> PCA -> float32 -> LinearRegression per
    repetition (EEG) or hemisphere (fsaverage), results grown with np.append.
    ``breakdown`` collects seconds per stage."""
    import numpy as np
    import torch
    from nest_rt_export import backbones
    transform = backbones.get("vit_b_32").transform()

    def upstream_transform(batch):
        return transform(torch.from_numpy(np.asarray(batch)))

    def timed(stage, function, *inputs):
        start = time.perf_counter()
        result = function(*inputs)
        breakdown[stage] = breakdown.get(stage, 0.0) + time.perf_counter() - start
        return result

    eeg = model["case"] not in ("fsaverage", "fsaverage_roi")
    stimulus = timed("preprocess", upstream_transform, images)
    responses = None
    with torch.no_grad():
        for start in range(0, len(stimulus), UPSTREAM_BATCH):
            batch = stimulus[start:start + UPSTREAM_BATCH]
            features = timed("backbone", lambda: model["features"](batch).numpy())
            features = timed("scaler", model["scaler"].transform, features)
            # legacy: 1000 components computed, the first 250 kept; current: 250 of 250
            components = timed("pca", lambda scaled: model["pca"].transform(scaled)[:, :COMPONENTS]
                               .astype(np.float32), features)
            del features
            predictions = timed("regression", lambda: [regression.predict(components).astype(np.float32)
                                                       for regression in model["regressions"]])
            if eeg:
                block = (timed("regression", lambda: np.stack(
                    [p.reshape(len(p), 63, 140) for p in predictions], axis=1)),)  # [n, 4, 63, 140]
            else:
                block = tuple(predictions)  # (lh, rh)
            # Upstream grows every result with np.append: each batch copies all earlier rows.
            responses = block if responses is None else timed(
                "np_append", lambda: tuple(np.append(old, new, axis=0) for old, new in zip(responses, block)))
    return responses[0] if eeg else responses


def worker_gemm(args) -> dict:
    return _common.worker_gemm(THREADS)


def worker_compare(args) -> dict:
    """Both paths' responses to the same images should agree (resize rounding aside)."""
    import numpy as np
    from nest_rt_export.parity import compare
    responses = Path(args.work_dir) / "responses"
    agreement, int8 = {}, None
    for case in args.cases.split(","):
        files = [responses / f"upstream_{NEST_RT_ONLY.get(case, case)}.npy", responses / f"nest_rt_{case}.npy"]
        if all(f.is_file() for f in files):
            upstream, nest_rt = (np.load(f).astype(np.float64) for f in files)
            agreement[case] = {
                "max_abs_diff_over_max_abs": float(np.abs(upstream - nest_rt).max() / np.abs(upstream).max()),
                "correlation": float(np.corrcoef(upstream.ravel(), nest_rt.ravel())[0, 1])}
    fp32_file, int8_file = responses / "nest_rt_eeg.npy", responses / "nest_rt_eeg_int8.npy"
    if fp32_file.is_file() and int8_file.is_file():  # per output (channel x time x repetition), across images
        int8 = compare(np.load(fp32_file), np.load(int8_file))
    return {"agreement": agreement, "int8_vs_fp32": int8}


def _save_responses(args, responses) -> None:
    """fsaverage's (lh, rh) is saved side by side; for several subjects only the last one."""
    import numpy as np
    if args.responses_file:
        if isinstance(responses, tuple):
            responses = np.concatenate(responses, axis=1)
        np.save(args.responses_file, responses)


def worker_setup(args) -> dict:
    """In a worker too: the parent must stay small, or every child's ru_maxrss inherits its peak."""
    counts = [int(count) for count in args.image_counts.split(",")]
    paths = prepare_work_dir(Path(args.work_dir), counts, reuse=args.reuse_setup == "1")
    return {key: {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else str(value)
            for key, value in paths.items()}


WORKERS = {"nest_rt": worker_nest_rt, "upstream": worker_upstream, "gemm": worker_gemm,
           "setup": worker_setup, "compare": worker_compare}


def run_worker_main(argv: list[str]) -> None:
    _common.worker_main(argv, WORKERS, ["--case", "--subjects", "--images-file", "--bundle", "--toolkit",
                                        "--responses-file", "--work-dir", "--image-counts", "--cases",
                                        "--reuse-setup"])


# =============================================================================================
# Setup: two synthetic toolkits at real sizes, their bundles and image files, cached.
# =============================================================================================
def prepare_work_dir(work_dir: Path, image_counts: list[int], reuse: bool = False) -> dict:
    """A current-layout toolkit (EEG subjects 1..10, fsaverage subject 1; its bundle also has the
    int8 backbone) and a legacy-layout
    one (EEG subject 1 with the shared 1000-component PCA), both exported with the synthetic
    ViT weights. Each pair is rebuilt only when its parameters or the exporter's source change
    (with ``reuse``, a complete earlier pair is kept even if the exporter's source changed)."""
    from nest_rt_export.synthetic_vit import VIT_WEIGHTS_NAME
    work_dir.mkdir(parents=True, exist_ok=True)
    layouts = {"current": {"eeg_subjects": EEG_SUBJECTS, "fsaverage_subjects": [FSAVERAGE_SUBJECT]},
               "legacy": {"eeg_subjects": [1], "fsaverage_subjects": []}}
    paths = {}
    for layout, subjects in layouts.items():
        toolkit_dir, bundle_dir = work_dir / f"toolkit_{layout}", work_dir / f"bundle_{layout}"
        marker = work_dir / f"setup_{layout}.json"
        wanted = {"format": SETUP_FORMAT, "layout": layout, **subjects, "components": COMPONENTS,
                  "legacy_components": LEGACY_COMPONENTS, "exporter_sha256": exporter_source_sha256()}
        found = json.loads(marker.read_text()) if marker.is_file() else None
        if found and reuse:
            found["exporter_sha256"] = wanted["exporter_sha256"]
        if not (found == wanted and (bundle_dir / "bundle.json").is_file()):
            from nest_rt_export.exporter import export_bundle
            from nest_rt_export.synthetic_vit import write_vit_toolkit
            marker.unlink(missing_ok=True)
            log(f"writing the synthetic {layout}-layout ViT toolkit to {toolkit_dir} (once)")
            write_vit_toolkit(toolkit_dir, layout=layout, components=COMPONENTS,
                              legacy_components=LEGACY_COMPONENTS, **subjects)
            log(f"exporting it to {bundle_dir} (once)")
            export_bundle(toolkit_dir, bundle_dir, vit_weights=toolkit_dir / VIT_WEIGHTS_NAME,
                          precisions=("int8",) if layout == "current" else (), overwrite=True, log=log)
            marker.write_text(json.dumps(wanted))
        paths[f"toolkit_{layout}"], paths[f"bundle_{layout}"] = toolkit_dir, bundle_dir
    paths["images"] = {count: _common.image_file(work_dir, count, IMAGE_SIZE, IMAGE_SEED)
                       for count in sorted(set(image_counts))}
    return paths


# =============================================================================================
# Orchestration
# =============================================================================================
def run_worker(kind: str, show_log: bool = False, **options) -> dict:
    return _common.run_worker(Path(__file__).resolve(), kind, THREADS, show_log=show_log, **options)


def case_subjects(case: str, ten: list[int]) -> list[int]:
    return ten if case == "eeg_x10" else [FSAVERAGE_SUBJECT if case.startswith("fsaverage") else 1]


def measure(path: str, case: str, count: int, subjects: list[int], setup: dict, work_dir: Path,
            repeat: int) -> dict:
    responses_file = work_dir / "responses" / f"{path}_{case}.npy"
    responses_file.parent.mkdir(exist_ok=True)
    layout = "legacy" if case == "eeg_legacy" else "current"
    options = {"case": case, "subjects": ",".join(map(str, subjects)),
               "images_file": setup["images"][str(count)], "responses_file": responses_file}
    options.update({"bundle": setup[f"bundle_{layout}"]} if path == "nest_rt"
                   else {"toolkit": setup[f"toolkit_{layout}"]})
    result = run_worker(path, **options)
    result.update(path=path, case=case, images=count, subjects=subjects, repeat=repeat,
                  images_per_s=count / result["encode_s"])
    log(f"{path:8s} {case:14s} N={count:<4d} repeat {repeat}: {result['images_per_s']:.2f} img/s, "
        f"load-to-first-response {result['load_to_first_response_s']:.1f} s, "
        f"peak RSS {result['peak_rss_mb']:.0f} MB ({result['worker_wall_s']:.0f} s wall, "
        f"{100 * result['other_cpu_share']:.0f} % CPU used by other processes)")
    return result


def plan_runs(args) -> list[tuple[str, str, int, int]]:
    """(path, case, images, repeat), repeats interleaved so that slow drift hits every path alike."""
    return [(path, case, args.ten_images if case == "eeg_x10" else args.images, repeat)
            for repeat in range(args.repeats) for case in args.cases for path in ("upstream", "nest_rt")
            if not (path == "upstream" and case in NEST_RT_ONLY)]


def summarize(runs: list[dict], ceiling: float) -> list[dict]:
    rows = []
    for case in CASES:
        for path in ("upstream", "nest_rt"):
            group = [r for r in runs if (r["case"], r["path"]) == (case, path)]
            if not group:
                continue
            row = {"case": case, "path": path, "images": group[0]["images"], "subjects": group[0]["subjects"],
                   "runs": len(group), "outputs_per_subject": group[0]["outputs_per_subject"],
                   "images_per_s": spread([r["images_per_s"] for r in group]),
                   "encode_s": spread([r["encode_s"] for r in group]),
                   "load_s": spread([r["load_s"] for r in group]),
                   "load_to_first_response_s": spread([r["load_to_first_response_s"] for r in group]),
                   "import_s": spread([r["import_s"] for r in group]),
                   "peak_rss_mb": spread([r["peak_rss_mb"] for r in group]),
                   "vm_hwm_mb": spread([r["vm_hwm_mb"] for r in group]),
                   "rss_after_load_mb": spread([r["rss_after_load_mb"] for r in group]),
                   "baseline_rss_mb": spread([r["baseline_rss_mb"] for r in group]),
                   "torch_imported": sorted({r["torch_imported"] for r in group}),
                   "batch_size": sorted({r["batch_size"] for r in group}),
                   "other_cpu_share": max(r["other_cpu_share"] for r in group)}
            if group[0].get("head_ms_per_image") is not None:
                row["head_ms_per_image"] = spread([r["head_ms_per_image"] for r in group])
            row["total_s"] = row["load_to_first_response_s"]["median"] + row["encode_s"]["median"]
            row["gflops_per_image"] = executed_flops_per_image(row) / 1e9
            row["achieved_gflops"] = row["images_per_s"]["median"] * row["gflops_per_image"]
            row["percent_of_ceiling"] = 100 * row["achieved_gflops"] / ceiling
            if path == "upstream":
                stages = sorted({stage for r in group for stage in r["breakdown_s"]})
                row["breakdown_s"] = {stage: statistics.median(r["breakdown_s"].get(stage, 0.0) for r in group)
                                      for stage in stages}
            rows.append(row)
    for row in rows:
        compared = NEST_RT_ONLY.get(row["case"], row["case"])
        upstream = next((r for r in rows if r["path"] == "upstream" and r["case"] == compared), None)
        row["speedup_vs_upstream"] = (row["images_per_s"]["median"] / upstream["images_per_s"]["median"]
                                      if upstream and row["images"] == upstream["images"] else None)
        row["speedup_with_load"] = upstream["total_s"] / row["total_s"] if row["speedup_vs_upstream"] else None
    return rows


def _row(rows, case, path):
    return next((r for r in rows if r["case"] == case and r["path"] == path), None)


def targets(rows: list[dict], int8_fidelity: dict | None) -> list[dict]:
    """The stated goals, each met or not (missing when its rows were not run)."""
    found = []

    def speedup(case, goal, label):
        row = _row(rows, case, "nest_rt")
        if row and row["speedup_vs_upstream"]:
            value = row["speedup_vs_upstream"]
            found.append({"target": label, "measured": f"{value:.2f}x (with load: {row['speedup_with_load']:.2f}x)",
                          "met": value >= goal})

    speedup("eeg", 1.15, "one EEG subject >= 1.15x upstream")
    ten = _row(rows, "eeg_x10", "nest_rt")
    count = len(ten["subjects"]) if ten else 10
    speedup("eeg_x10", 5.0, f"{count} EEG subjects (encode_many) >= 5x upstream's {count} separate runs")
    speedup("fsaverage", 1.3, "fsaverage all vertices >= 1.3x upstream")
    full, roi = _row(rows, "fsaverage", "nest_rt"), _row(rows, "fsaverage_roi", "nest_rt")
    if full and roi:  # measurably: the head's time ranges over all runs do not overlap
        found.append({"target": f"ROI selection ({ROI}) faster than all vertices (nest_rt)",
                      "measured": f"head {_range(roi['head_ms_per_image'], 2)} vs "
                                  f"{_range(full['head_ms_per_image'], 2)} ms/image; end to end "
                                  f"{roi['images_per_s']['median']:.2f} vs {full['images_per_s']['median']:.2f} img/s",
                      "met": roi["head_ms_per_image"]["max"] < full["head_ms_per_image"]["min"]})
    speedup("eeg_legacy", 1.4, "legacy EEG >= 1.4x upstream")
    int8, fp32 = _row(rows, "eeg_int8", "nest_rt"), _row(rows, "eeg", "nest_rt")
    if int8 and fp32 and int8["speedup_vs_upstream"]:
        over_fp32 = int8["images_per_s"]["median"] / fp32["images_per_s"]["median"]
        found.append({"target": f"int8 EEG subject 1 >= {INT8_SPEEDUP_GOAL}x (of nest_rt fp32; upstream also shown)",
                      "measured": f"{over_fp32:.2f}x nest_rt fp32, {int8['speedup_vs_upstream']:.2f}x upstream",
                      "met": over_fp32 >= INT8_SPEEDUP_GOAL})
    if int8_fidelity:
        found.append({"target": f"int8 vs fp32: correlation >= {INT8_CORRELATION_GOAL} per output",
                      "measured": f"min {int8_fidelity['min_correlation']:.5f} over {int8_fidelity['images']} images; "
                                  f"max |diff| / max |response| {int8_fidelity['relative_error']:.4f}",
                      "met": int8_fidelity["min_correlation"] >= INT8_CORRELATION_GOAL})
    for case in CASES:
        ours, theirs = _row(rows, case, "nest_rt"), _row(rows, NEST_RT_ONLY.get(case, case), "upstream")
        if ours and theirs:
            found.append({"target": f"{case}: nest_rt peak RSS below upstream's",
                          "measured": f"{ours['peak_rss_mb']['median']:.0f} vs {theirs['peak_rss_mb']['median']:.0f} MB",
                          "met": ours["peak_rss_mb"]["median"] < theirs["peak_rss_mb"]["median"]})
    return found


def _range(stat: dict, digits: int) -> str:
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}–{stat['max']:.{digits}f})"


def markdown_tables(rows: list[dict], ceiling: float, agreement: dict, goals: list[dict], repeats: int) -> str:
    lines = [f"ViT-B/32, {THREADS} threads, {IMAGE_SIZE}x{IMAGE_SIZE} uint8 images; median (min–max) over "
             f"{repeats} run(s) per row; GEMM ceiling {ceiling:.1f} GFLOP/s", "",
             "| case | path | N | images/s | speed-up | load-to-first-response s | total s | peak RSS MB "
             "| GFLOP/img | GFLOP/s | % of ceiling |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        speedup = (f"{row['speedup_vs_upstream']:.2f}x" if row["path"] == "nest_rt" and row["speedup_vs_upstream"]
                   else "–")
        # the ceiling is a float32 GEMM rate: an int8 backbone is not measured against it
        ceiling_share = "– (int8)" if row["case"] == "eeg_int8" else f"{row['percent_of_ceiling']:.0f} %"
        lines.append(f"| {row['case']} | {row['path']} | {row['images']} | {_range(row['images_per_s'], 2)} "
                     f"| {speedup} | {_range(row['load_to_first_response_s'], 1)} | {row['total_s']:.1f} "
                     f"| {_range(row['peak_rss_mb'], 0)} | {row['gflops_per_image']:.2f} "
                     f"| {row['achieved_gflops']:.1f} | {ceiling_share} |")
    lines += ["", "Cases:", ""] + [f"- {case}: {text}" for case, text in CASES.items()
                                   if any(r["case"] == case for r in rows)]
    lines += ["", "Targets:", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {g['target']} | {g['measured']} | {'yes' if g['met'] else 'NO'} |" for g in goals]
    lines += ["", "Where the time goes (median seconds of the timed encode, summed over subjects):", ""]
    for row in rows:
        if row["path"] == "upstream":
            stages = ", ".join(f"{stage} {row['breakdown_s'][stage]:.2f}" for stage in UPSTREAM_STAGES
                               if stage in row["breakdown_s"])
            lines.append(f"- upstream {row['case']} N={row['images']}: {stages} "
                         f"(encode {row['encode_s']['median']:.2f})")
    one, many = _row(rows, "eeg", "nest_rt"), _row(rows, "eeg_x10", "nest_rt")
    if one and many and len(many["subjects"]) > 1:
        extra = (many["encode_s"]["median"] / many["images"] - one["encode_s"]["median"] / one["images"]) / (
            len(many["subjects"]) - 1)
        lines.append(f"- nest_rt: one EEG subject {1000 * one['encode_s']['median'] / one['images']:.0f} ms/image "
                     f"(backbone + head); each further subject in encode_many adds {1000 * extra:.0f} ms/image")
    for row in rows:
        if "head_ms_per_image" in row:
            lines.append(f"- nest_rt {row['case']}: the head alone (features cached) "
                         f"{_range(row['head_ms_per_image'], 2)} ms/image")
    for row in rows:
        if row["path"] == "nest_rt":
            lines.append(f"- nest_rt {row['case']}: RSS {row['baseline_rss_mb']['median']:.0f} MB after imports and "
                         f"images, {row['rss_after_load_mb']['median']:.0f} MB after loading, peak "
                         f"{row['peak_rss_mb']['median']:.0f} MB")
    busiest = max(rows, key=lambda r: r["other_cpu_share"])
    lines += ["", f"Other processes used at most {100 * busiest['other_cpu_share']:.0f} % of the CPU "
              "during any run (should be near 0 for trustworthy timings)."]
    lines += ["", "Agreement of the two paths' responses (last subject for eeg_x10):", ""]
    lines += [f"- {case}: correlation {a['correlation']:.6f}, max |diff| / max |response| "
              f"{a['max_abs_diff_over_max_abs']:.2e}" for case, a in agreement.items()]
    lines += ["", "eeg_int8 is compared with upstream's fp32 eeg run: its speed-up is over upstream, and "
              "its agreement above is int8 nest_rt vs fp32 upstream."]
    return "\n".join(lines)


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3, help="fresh worker runs per (path, case)")
    parser.add_argument("--images", type=int, default=100, help="N for every case but eeg_x10")
    parser.add_argument("--ten-images", type=int, help="N for eeg_x10, both paths (default: --images)")
    parser.add_argument("--ten-subjects", type=int, default=10, help="EEG subjects in eeg_x10 (1..10)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--output", type=Path,
                        help=f"raw JSON (default {DEFAULT_RESULT_FILE.relative_to(REPO_ROOT)}, "
                             "or vit_quick.json with --quick)")
    parser.add_argument("--reuse-setup", action="store_true",
                        help="keep an existing toolkit/bundle pair even if the exporter's source changed")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 repeat, 8 images, 2 EEG subjects in eeg_x10 (real sizes)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.images, args.ten_subjects = 1, 8, 2
    args.ten_images = args.ten_images or args.images
    if not 1 <= args.ten_subjects <= len(EEG_SUBJECTS):
        parser.error(f"--ten-subjects must be 1..{len(EEG_SUBJECTS)}")
    _common.default_output(args, DEFAULT_RESULT_FILE)
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    work_dir = args.work_dir.resolve()
    started = time.perf_counter()
    setup = run_worker("setup", show_log=True, work_dir=work_dir,
                       image_counts=f"{args.images},{args.ten_images}", reuse_setup=int(args.reuse_setup))
    gemm, ceiling, gemm_other_cpu_share = _common.gemm_ceiling(run_worker)
    ten = EEG_SUBJECTS[:args.ten_subjects]
    for stale in (work_dir / "responses").glob("*.npy"):
        stale.unlink()  # responses of an earlier run (another N) must not be compared
    runs = [measure(path, case, count, case_subjects(case, ten), setup, work_dir, repeat)
            for path, case, count, repeat in plan_runs(args)]
    rows = summarize(runs, ceiling)
    compared = run_worker("compare", work_dir=work_dir, cases=",".join(args.cases))
    agreement = compared["agreement"]
    goals = targets(rows, compared["int8_vs_fp32"])
    report = {"config": {"cases": args.cases, "repeats": args.repeats, "images": args.images,
                         "ten_images": args.ten_images, "ten_subjects": ten, "image_size": IMAGE_SIZE,
                         "upstream_batch": UPSTREAM_BATCH, "components": COMPONENTS,
                         "legacy_components": LEGACY_COMPONENTS, "roi": ROI, "quick": args.quick,
                         "reuse_setup": args.reuse_setup},
              "environment": _common.environment(THREADS, ("nest-rt", "onnxruntime", "torch", "torchvision",
                                                           "numpy", "scikit-learn")),
              "gemm_gflops": gemm, "gemm_ceiling_gflops": ceiling, "gemm_other_cpu_share": gemm_other_cpu_share,
              "summary": rows, "targets": goals, "agreement": agreement, "int8_vs_fp32": compared["int8_vs_fp32"],
              "runs": runs, "total_wall_s": time.perf_counter() - started}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1, default=str))
    print(markdown_tables(rows, ceiling, agreement, goals, args.repeats))
    print(f"\nraw results: {args.output} ({report['total_wall_s'] / 60:.1f} minutes)")


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        run_worker_main(sys.argv[1:])
    else:
        main(sys.argv[1:])
