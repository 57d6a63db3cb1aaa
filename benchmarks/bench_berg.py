"""Side-by-side benchmark of BERG's linear models (ViT-B/32 and AlexNet backbones): nest_rt
(onnxruntime, ``encode_many``) vs the upstream way (torch + scikit-learn, one model per run), at
real sizes (460,800 ViT or 205,672 AlexNet features, 250 PCA components, every output at its real
size; EEG in the current format, one PCA per repetition, stored as pickled scikit-learn PCA objects).

Run from the repository root:

    python benchmarks/bench_berg.py                  # every case, 3 repeats, 100 images
    python benchmarks/bench_berg.py --quick          # smoke test: 1 repeat, 8 images, 2 EEG subjects
    python benchmarks/bench_berg.py --cases alexnet_eeg alexnet_eeg_untrained alexnet_fsaverage \
        alexnet_fsaverage_untrained                  # the AlexNet cases only

Cases:
- five: EEG, MEG, THINGS fMRI, Utah array (TVSD) and fsaverage, one subject each, on the same
  images. Upstream: five runs one after the other, each loading the ViT and the model's files and
  running both. nest_rt: one ``encode_many`` (one backbone pass per batch for all five).
- eeg: EEG subject 1 alone.
- eeg_x10: EEG subjects 1..10 on the same images (upstream: ten runs; nest_rt: encode_many).
- alexnet_eeg, alexnet_eeg_untrained, alexnet_fsaverage, alexnet_fsaverage_untrained: subject 1
  of each AlexNet model alone (trained: a random state dict at the real size; untrained:
  upstream's seeded initialisation).

The upstream path is tests/berg_reference.py (upstream's maths and order of operations with
scikit-learn objects, the pickled PCA objects used as stored) after upstream's transform and
torchvision's feature extractor in batches of 100. Its files are read when its model is built,
before the first response, as upstream reads them (berg_reference.files_read_once). Every
measurement runs in a fresh worker process (this file with ``--worker``), so peak RSS belongs to
one run. The first run writes a synthetic toolkit and its bundle (about 45 GB with ten EEG
subjects; the AlexNet ones apart, about 4 GB) into the work dir.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _common
from _common import REPO_ROOT, current_rss_mb, exporter_source_sha256, log, spread

DEFAULT_WORK_DIR = REPO_ROOT / "benchmarks" / "results" / "work_berg"
DEFAULT_RESULT_FILE = REPO_ROOT / "benchmarks" / "results" / "berg.json"
THREADS = 2
IMAGE_SIZE = 425
IMAGE_SEED = 2025
COMPONENTS = 250
SETUP_FORMAT = 1
EEG, MEG = "eeg-things_eeg_2-vit_b_32", "meg-things_meg_1-vit_b_32"
THINGS_FMRI, TVSD, FSAVERAGE = "fmri-things_fmri_1-vit_b_32", "utah_array-tvsd-vit_b_32", "fmri-nsd_fsaverage-vit_b_32"
ALEXNET_EEG, ALEXNET_FSAVERAGE = "eeg-things_eeg_2-alexnet", "fmri-nsd_fsaverage-alexnet"
ALEXNET_EEG_UNTRAINED, ALEXNET_FSAVERAGE_UNTRAINED = ALEXNET_EEG + "_untrained", ALEXNET_FSAVERAGE + "_untrained"
FIVE = [(EEG, 1), (MEG, 1), (THINGS_FMRI, 1), (TVSD, "F"), (FSAVERAGE, 1)]
CASES = {"five": "EEG, MEG, THINGS fMRI, TVSD and fsaverage, one subject each",
         "eeg": "EEG subject 1 (one PCA per repetition)",
         "eeg_x10": "EEG subjects 1..10 on the same images",
         "alexnet_eeg": "AlexNet EEG subject 1 (one PCA per repetition)",
         "alexnet_eeg_untrained": "untrained AlexNet EEG subject 1",
         "alexnet_fsaverage": "AlexNet fsaverage subject 1 (both hemispheres)",
         "alexnet_fsaverage_untrained": "untrained AlexNet fsaverage subject 1"}
SINGLE_MODEL_CASES = {"eeg": EEG, "alexnet_eeg": ALEXNET_EEG, "alexnet_eeg_untrained": ALEXNET_EEG_UNTRAINED,
                      "alexnet_fsaverage": ALEXNET_FSAVERAGE, "alexnet_fsaverage_untrained": ALEXNET_FSAVERAGE_UNTRAINED}
GOALS = {"five": 4.0, "eeg": 1.3, "eeg_x10": 5.0, "alexnet_eeg": 1.5, "alexnet_eeg_untrained": 1.5,
         "alexnet_fsaverage": 1.5, "alexnet_fsaverage_untrained": 1.5}
# per image: the ViT as bench_vit.py; AlexNet's multiply-adds (conv1..5, fc6..8 at 224 x 224) x 2
BACKBONE_FLOPS = {"vit_b_32": 2 * (115_605_504 + 12 * 357_734_400),
                  "alexnet": 2 * (70_276_800 + 223_948_800 + 112_140_288 + 149_520_384 + 99_680_256
                                  + 37_748_736 + 16_777_216 + 4_096_000)}
FEATURES = {"vit_b_32": 460_800, "alexnet": 205_672}
OUTPUTS = {EEG: 4 * 63 * 140, MEG: 271 * 281, THINGS_FMRI: 211_339, TVSD: 1024 * 300, FSAVERAGE: 2 * 163_842,
           ALEXNET_EEG: 4 * 63 * 140, ALEXNET_EEG_UNTRAINED: 4 * 63 * 140,
           ALEXNET_FSAVERAGE: 2 * 163_842, ALEXNET_FSAVERAGE_UNTRAINED: 2 * 163_842}
PCAS = {EEG: 4, ALEXNET_EEG: 4, ALEXNET_EEG_UNTRAINED: 4}


def network(model_id: str) -> str:
    """The backbone a model runs on: 'vit_b_32', 'alexnet' or 'alexnet_untrained'."""
    return model_id.split("-")[-1]


def architecture(model_id: str) -> str:
    return "vit_b_32" if network(model_id) == "vit_b_32" else "alexnet"


def case_group(case: str) -> str:
    """Which toolkit and bundle a case reads: the ViT-B/32 one or the AlexNet one."""
    return "alexnet" if case.startswith("alexnet") else "vit_b_32"


def case_models(case: str, ten: int) -> list[tuple[str, object]]:
    if case == "five":
        return FIVE
    if case == "eeg_x10":
        return [(EEG, s) for s in range(1, ten + 1)]
    return [(SINGLE_MODEL_CASES[case], 1)]


def head_flops(model_id: str) -> int:
    """Per image: 2 D K per PCA (EEG: one per repetition) and 2 K per output."""
    return (PCAS.get(model_id, 1) * 2 * FEATURES[architecture(model_id)] * COMPONENTS
            + 2 * COMPONENTS * OUTPUTS[model_id])


def executed_flops_per_image(path: str, models) -> int:
    """Upstream runs a backbone once per model; nest_rt once per batch for all models on it."""
    runs = [network(m) for m, _ in models] if path == "upstream" else sorted({network(m) for m, _ in models})
    return (sum(BACKBONE_FLOPS[architecture(name)] for name in runs)
            + sum(head_flops(m) for m, _ in models))


# =============================================================================================
# Workers (one process each; each prints one JSON result line)
# =============================================================================================
def _models_arg(text: str) -> list[tuple[str, object]]:
    pairs = []
    for item in text.split(","):
        model_id, subject = item.split("@")
        pairs.append((model_id, int(subject) if subject.isdigit() else subject))
    return pairs


def worker_nest_rt(args) -> dict:
    imports_started = time.perf_counter()
    import numpy as np
    from nest_rt import BERG
    import_s = time.perf_counter() - imports_started
    images = np.load(args.images_file)
    baseline = current_rss_mb()
    start = time.perf_counter()
    berg = BERG(args.bundle, num_threads=THREADS)
    models = [berg.get_encoding_model(model_id, subject=subject, device="cpu")
              for model_id, subject in _models_arg(args.models)]
    berg.encode_many(models, images[:1], show_progress=False)
    first = time.perf_counter()
    responses = berg.encode_many(models, images, show_progress=False)
    encode_s = time.perf_counter() - first
    _save(args, responses)
    return {"load_to_first_response_s": first - start, "encode_s": encode_s, "import_s": import_s,
            "baseline_rss_mb": baseline, "torch_imported": "torch" in sys.modules}


def worker_upstream(args) -> dict:
    """One upstream run per model, one after another: load the ViT and the model's files, then
    transform, extract features (batches of 100) and apply the head."""
    imports_started = time.perf_counter()
    import gc

    import numpy as np
    import torch
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from berg_reference import (alexnet_extractor, files_read_once, upstream_alexnet, upstream_alexnet_features,
                                upstream_responses, vit_extractor, vit_features)
    from nest_rt_export.synthetic_berg import ALEXNET_WEIGHTS_NAME
    from nest_rt_export.synthetic_vit import VIT_WEIGHTS_NAME
    import_s = time.perf_counter() - imports_started
    torch.set_num_threads(THREADS)
    images = np.load(args.images_file)
    baseline = current_rss_mb()
    toolkit = Path(args.toolkit)

    def backbone(name: str):
        """(extractor, features function) as upstream's loader builds them for this network."""
        if name == "vit_b_32":
            return vit_extractor(toolkit / VIT_WEIGHTS_NAME).eval(), vit_features
        weights = toolkit / ALEXNET_WEIGHTS_NAME if name == "alexnet" else None  # None: seeded, untrained
        return alexnet_extractor(upstream_alexnet(weights)), upstream_alexnet_features

    load_to_first, encode_s, responses = 0.0, 0.0, []
    for model_id, subject in _models_arg(args.models):
        start = time.perf_counter()
        with files_read_once():  # read while the model is built, as upstream's loaders do
            extractor, features = backbone(network(model_id))
            upstream_responses(toolkit, model_id, subject, features(extractor, images[:1]))
            first = time.perf_counter()
            responses.append(upstream_responses(toolkit, model_id, subject, features(extractor, images)))
            encode_s += time.perf_counter() - first
        load_to_first += first - start
        del extractor
        gc.collect()  # the next run starts from nothing, as a new upstream process would
    _save(args, responses)
    return {"load_to_first_response_s": load_to_first, "encode_s": encode_s, "import_s": import_s,
            "baseline_rss_mb": baseline, "torch_imported": True}


def _save(args, responses) -> None:
    """The last model's responses (fsaverage's lh and rh side by side), for the agreement check."""
    import numpy as np
    last = responses[-1]
    np.save(args.responses_file, np.concatenate(last, axis=1) if isinstance(last, tuple) else last)


def worker_setup(args) -> dict:
    """The toolkit and bundle of one group of cases (the ViT-B/32 or the AlexNet one), written once."""
    work_dir, ten, alexnet = Path(args.work_dir), int(args.ten), args.group == "alexnet"
    group_dir = work_dir / "alexnet" if alexnet else work_dir
    toolkit_dir, bundle_dir = group_dir / "toolkit", group_dir / "bundle"
    marker = group_dir / "setup.json"
    wanted = {"format": SETUP_FORMAT, "eeg_subjects": 1 if alexnet else ten, "components": COMPONENTS,
              "exporter_sha256": exporter_source_sha256()}
    found = json.loads(marker.read_text()) if marker.is_file() else None
    if found and args.reuse_setup == "1":
        found["exporter_sha256"] = wanted["exporter_sha256"]
    if not (found == wanted and (bundle_dir / "bundle.json").is_file()):
        from nest_rt_export.exporter import export_bundle
        from nest_rt_export.synthetic_berg import ALEXNET_WEIGHTS_NAME, write_berg_toolkit
        from nest_rt_export.synthetic_vit import VIT_WEIGHTS_NAME, write_vit_toolkit
        marker.unlink(missing_ok=True)
        written = toolkit_dir / "written.json"  # the toolkit alone (an export may fail after it)
        toolkit_wanted = {key: wanted[key] for key in ("format", "eeg_subjects", "components")}
        if not (written.is_file() and json.loads(written.read_text()) == toolkit_wanted):
            log(f"writing the synthetic BERG toolkit to {toolkit_dir} (once)")
            if alexnet:
                write_berg_toolkit(toolkit_dir, alexnet_eeg_subjects=[1], alexnet_fsaverage_subjects=[1],
                                   eeg_pca_form="object", components=COMPONENTS, seed=0)
            else:
                write_vit_toolkit(toolkit_dir, fsaverage_subjects=[1], components=COMPONENTS, seed=0)
                write_berg_toolkit(toolkit_dir, eeg_subjects=list(range(1, ten + 1)), eeg_pca_form="object",
                                   meg_subjects=[1], meg_variants=("full",), things_fmri_subjects=[1],
                                   tvsd_subjects=["F"], components=COMPONENTS, seed=0)
            written.write_text(json.dumps(toolkit_wanted))
        log(f"exporting it to {bundle_dir} (once)")
        weights = ({"alexnet_weights": toolkit_dir / ALEXNET_WEIGHTS_NAME} if alexnet
                   else {"vit_weights": toolkit_dir / VIT_WEIGHTS_NAME})
        export_bundle(toolkit_dir, bundle_dir, overwrite=True, log=log, **weights)
        marker.write_text(json.dumps(wanted))
    counts = sorted({int(c) for c in args.image_counts.split(",")})
    return {"toolkit": str(toolkit_dir), "bundle": str(bundle_dir),
            "images": {str(c): str(_common.image_file(work_dir, c, IMAGE_SIZE, IMAGE_SEED)) for c in counts}}


def worker_compare(args) -> dict:
    import numpy as np
    from nest_rt_export.parity import compare
    found = {}
    for case in args.cases.split(","):
        files = [Path(args.work_dir) / "responses" / f"{path}_{case}.npy" for path in ("upstream", "nest_rt")]
        if all(f.is_file() for f in files):
            found[case] = compare(np.load(files[0]), np.load(files[1]))
    return found


WORKERS = {"nest_rt": worker_nest_rt, "upstream": worker_upstream, "setup": worker_setup,
           "compare": worker_compare, "gemm": lambda args: _common.worker_gemm(THREADS)}


# =============================================================================================
# Orchestration
# =============================================================================================
def run_worker(kind: str, show_log: bool = False, **options) -> dict:
    return _common.run_worker(Path(__file__).resolve(), kind, THREADS, show_log=show_log, **options)


def measure(path: str, case: str, models, count: int, setup: dict, work_dir: Path) -> dict:
    """One run of ``path`` on ``case``; ``setup`` is the worker_setup result of the case's group."""
    responses = work_dir / "responses" / f"{path}_{case}.npy"
    responses.parent.mkdir(exist_ok=True)
    options = {"models": ",".join(f"{m}@{s}" for m, s in models), "images_file": setup["images"][str(count)],
               "responses_file": responses}
    options.update({"bundle": setup["bundle"]} if path == "nest_rt" else {"toolkit": setup["toolkit"]})
    result = run_worker(path, **options)
    result.update(path=path, case=case, images=count, images_per_s=count / result["encode_s"])
    log(f"{path:8s} {case:8s} N={count}: {result['images_per_s']:.2f} img/s, peak RSS {result['peak_rss_mb']:.0f} MB, "
        f"{100 * result['other_cpu_share']:.0f} % CPU used by other processes")
    return result


def summarize(runs: list[dict], ceiling: float, ten: int) -> list[dict]:
    rows = []
    for case in CASES:
        for path in ("upstream", "nest_rt"):
            group = [r for r in runs if (r["case"], r["path"]) == (case, path)]
            if not group:
                continue
            models = case_models(case, ten)
            speed = spread([r["images_per_s"] for r in group])
            flops = executed_flops_per_image(path, models)
            rows.append({"case": case, "path": path, "images": group[0]["images"], "models": len(models),
                         "runs": len(group), "images_per_s": speed,
                         "load_to_first_response_s": spread([r["load_to_first_response_s"] for r in group]),
                         "peak_rss_mb": spread([r["peak_rss_mb"] for r in group]),
                         "gflops_per_image": flops / 1e9, "achieved_gflops": speed["median"] * flops / 1e9,
                         "percent_of_ceiling": 100 * speed["median"] * flops / 1e9 / ceiling,
                         "torch_imported": sorted({r["torch_imported"] for r in group}),
                         "other_cpu_share": max(r["other_cpu_share"] for r in group)})
    for row in rows:
        upstream = next((r for r in rows if r["case"] == row["case"] and r["path"] == "upstream"), None)
        row["speedup_vs_upstream"] = (row["images_per_s"]["median"] / upstream["images_per_s"]["median"]
                                      if upstream and row["path"] == "nest_rt" else None)
    return rows


def _range(stat: dict, digits: int) -> str:
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}–{stat['max']:.{digits}f})"


def markdown(rows: list[dict], ceiling: float, agreement: dict, repeats: int, single_rss: dict) -> str:
    lines = [f"BERG linear models, {THREADS} threads, {IMAGE_SIZE}x{IMAGE_SIZE} uint8 images; median "
             f"(min–max) over {repeats} run(s); GEMM ceiling {ceiling:.1f} GFLOP/s", "",
             "| case | path | N | images/s | speed-up | load-to-first-response s | peak RSS MB | GFLOP/s (% of ceiling) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        speedup = f"**{row['speedup_vs_upstream']:.2f}x**" if row["speedup_vs_upstream"] else "–"
        lines.append(f"| {row['case']} | {row['path']} | {row['images']} | {_range(row['images_per_s'], 2)} | {speedup} "
                     f"| {_range(row['load_to_first_response_s'], 1)} | {_range(row['peak_rss_mb'], 0)} "
                     f"| {row['achieved_gflops']:.0f} ({row['percent_of_ceiling']:.0f} %) |")
    lines += ["", "Targets:", ""]
    for row in rows:
        if row["speedup_vs_upstream"]:
            goal = GOALS[row["case"]]
            lines.append(f"- {row['case']}: {row['speedup_vs_upstream']:.2f}x >= {goal}x: "
                         f"{'met' if row['speedup_vs_upstream'] >= goal else 'NOT met'}")
            if row["case"].startswith("alexnet"):  # the AlexNet issue's memory target, case by case
                upstream = next(r for r in rows if r["case"] == row["case"] and r["path"] == "upstream")
                ours, theirs = row["peak_rss_mb"]["median"], upstream["peak_rss_mb"]["median"]
                lines.append(f"- {row['case']}: peak RSS {ours:.0f} MB < upstream's {theirs:.0f} MB: "
                             f"{'met' if ours < theirs else 'NOT met'}")
    five = next((r for r in rows if r["case"] == "five" and r["path"] == "nest_rt"), None)
    if five and single_rss:
        largest = max(single_rss.values())
        lines.append(f"- five: peak RSS {five['peak_rss_mb']['median']:.0f} MB <= upstream's largest single run "
                     f"({largest:.0f} MB, {max(single_rss, key=single_rss.get)}): "
                     f"{'met' if five['peak_rss_mb']['median'] <= largest else 'NOT met'}")
    lines += ["", "Agreement of the two paths' responses (last model of each case):", ""]
    lines += [f"- {case}: min correlation per output {a['min_correlation']:.6f}, relative error "
              f"{a['relative_error']:.2e}" for case, a in agreement.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--ten-subjects", type=int, default=10)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--reuse-setup", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.images, args.ten_subjects = 1, 8, 2
    _common.default_output(args, DEFAULT_RESULT_FILE)
    work_dir = args.work_dir.resolve()
    started = time.perf_counter()
    setups = {group: run_worker("setup", show_log=True, work_dir=work_dir, ten=args.ten_subjects, group=group,
                                image_counts=str(args.images), reuse_setup=int(args.reuse_setup))
              for group in dict.fromkeys(case_group(case) for case in args.cases)}
    gemm, ceiling, _ = _common.gemm_ceiling(run_worker)
    for stale in (work_dir / "responses").glob("*.npy"):
        stale.unlink()
    runs = [measure(path, case, case_models(case, args.ten_subjects), args.images, setups[case_group(case)],
                    work_dir)
            for _ in range(args.repeats) for case in args.cases for path in ("upstream", "nest_rt")]
    single_rss = {}
    if "five" in args.cases:  # upstream's largest single-model run, for the memory target
        for model_id, subject in FIVE:
            single_rss[model_id] = measure("upstream", f"single_{model_id}", [(model_id, subject)], args.images,
                                           setups["vit_b_32"], work_dir)["peak_rss_mb"]
    rows = summarize(runs, ceiling, args.ten_subjects)
    compared = run_worker("compare", work_dir=work_dir, cases=",".join(args.cases))
    agreement = {case: stats for case, stats in compared.items() if case in CASES}  # not the worker's timings
    report = {"config": vars(args) | {"work_dir": str(work_dir), "output": str(args.output)},
              "environment": _common.environment(THREADS, ("nest-rt", "onnxruntime", "torch", "numpy", "scikit-learn")),
              "gemm_gflops": gemm, "gemm_ceiling_gflops": ceiling, "summary": rows, "agreement": agreement,
              "upstream_single_model_peak_rss_mb": single_rss, "runs": runs,
              "total_wall_s": time.perf_counter() - started}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1, default=str))
    print(markdown(rows, ceiling, agreement, args.repeats, single_rss))
    print(f"\nraw results: {args.output} ({report['total_wall_s'] / 60:.1f} minutes)")


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        _common.worker_main(sys.argv[1:], WORKERS, ["--models", "--images-file", "--bundle", "--toolkit",
                                                    "--responses-file", "--work-dir", "--image-counts", "--cases",
                                                    "--reuse-setup", "--ten", "--group"])
    else:
        main(sys.argv[1:])
