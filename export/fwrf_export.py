"""Export of the fwRF models (`fmri-nsd-fwrf`): one graph per subject and ROI."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from nest_rt import catalog
from nest_rt.bundle import nested_value
from nest_rt.models import fwrf_batch_size, fwrf_working_bytes

from . import toolkit
from .artifacts import record_graph, record_sources, save_flat_npz
from .errors import ExportError
from .checks import check_resize, refuse_network
from .contract import IMAGES_INPUT, contract_header, write_sidecar
from .fwrf_onnx import INPUT_SIZE, OUTPUT_NAME, build_fwrf_graph
from .onnx_graph import INPUT_NAME, OPSET
from .parity import compare, network_stats

FWRF = catalog.fwrf_model().id
PARITY_SIZES = (227, 256)  # the native size (no resize) and one resized size
PARITY_IMAGES = 8


def fwrf_jobs(nest_dir: Path, subjects, rois) -> list[tuple[int, str]]:
    """(subject, ROI) pairs to export: what was asked for, where not asked, everything found.
    Explicitly requested ROIs must exist; a missing file is an error, never a silent skip."""
    found = toolkit.available_fwrf(nest_dir)
    subjects = ([catalog.validate_subject(FWRF, s) for s in subjects if s in catalog.subjects(FWRF)]
                if subjects else sorted(found))
    rois = [catalog.validate_roi(FWRF, r) for r in rois] if rois else None
    jobs = []
    for subject in subjects:
        for roi in rois or found.get(subject, []):
            files = toolkit.fwrf_files(nest_dir, subject, roi)
            missing = [str(p) for p in [*files["weights"], files["metadata"]] if not p.is_file()]
            if missing:
                raise ExportError(f"subject {subject} roi {roi}: toolkit files missing: {missing}")
            jobs.append((subject, roi))
    return jobs


def export_fwrf(nest_dir: Path, staging: Path, manifest: dict, subject: int, roi: str, portable: bool = False) -> None:
    from .fwrf_torch import FwrfReference
    files = toolkit.fwrf_files(nest_dir, subject, roi)
    checkpoints = [toolkit.load_checkpoint(path) for path in files["weights"]]
    for path, checkpoint in zip(files["weights"], checkpoints):
        if subject not in checkpoint["best_params"].get("fwrfs", {}):
            raise ExportError(f"{path} has no readout for subject {subject} under best_params['fwrfs']")
    parts = [(c["best_params"]["enc"], c["best_params"]["fwrfs"][subject]) for c in checkpoints]
    split_voxels = [len(readout["b"]) for _, readout in parts]
    metadata = toolkit.load_npy_dict(files["metadata"])
    if len(metadata.get("fmri", {}).get("ncsnr", [])) != sum(split_voxels):
        raise ExportError(f"subject {subject} roi {roi}: {files['metadata']} does not describe the "
                          f"{sum(split_voxels)} voxels of the checkpoints")
    reference = FwrfReference.from_checkpoints(checkpoints, subject)

    def check(graph_path: Path) -> tuple[dict, dict]:
        return (_measure_parity(reference, graph_path, seed=subject * 100 + catalog.rois(FWRF).index(roi)),
                check_resize(graph_path, (INPUT_SIZE, INPUT_SIZE), graph_path.name))
    provenance = {"sources": record_sources(nest_dir, [*files["weights"], files["metadata"]], manifest),
                  "training_args": [vars(c["args."]) for c in checkpoints],
                  "best_epoch": [int(c["best_epoch"]) for c in checkpoints]}
    write_fwrf_model(staging, manifest, subject, roi, parts, metadata, provenance, check, portable)


def write_fwrf_model(staging: Path, manifest: dict, subject: int, roi: str, parts: list[tuple[dict, dict]],
                     metadata: dict, provenance: dict, check: Callable[[Path], tuple[dict, dict]] | None,
                     portable: bool = False) -> None:
    """Write one ROI's graph, metadata and sidecar into the bundle being assembled and list them
    in its manifest. ``check(graph_path)`` returns the (parity, resize parity) records, refusing a
    wrong graph; None (the torch-free demo bundle only) records that nothing was checked.
    ``portable``: see build_fwrf_graph."""
    import onnx
    names = {key: pattern.format(subject=subject, roi=roi)
             for key, pattern in catalog.model_entry(FWRF).bundle_files.items()}
    split_voxels = [len(readout["b"]) for _, readout in parts]
    graph_path = staging / names["graph"]
    graph_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(build_fwrf_graph(parts, doc=f"NEST {FWRF} subject {subject} roi {roi}", portable=portable),
                    graph_path)
    parity, resize_parity = check(graph_path) if check else ({}, {})
    save_flat_npz(staging / names["metadata"], metadata)
    contract = _fwrf_contract(names, subject, roi, sum(split_voxels), metadata, graph_path.stat().st_size)
    sidecar = {
        "contract": contract,
        "model_id": FWRF, "subject": subject, "roi": roi, "voxels": sum(split_voxels),
        "splits": split_voxels,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", 3, "S", "S"],
                  "values": "integers 0..255, RGB, channels first, square images of any size S"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", sum(split_voxels)],
                   "columns": "voxels in metadata order: column j is the j-th True voxel of "
                              "metadata fmri/roi_mask_volume in C order"},
        "preprocessing": ["resize to 227x227: bilinear, antialias, half-pixel centres "
                          "(torchvision Resize on integer tensors), rounded half to even",
                          "divide by 255", "subtract the checkpoint's mu (stim_mean), inside the graph"],
        "opset": OPSET,
        "provenance": provenance,
        "parity": parity,
        "resize_parity": resize_parity,
    }
    write_sidecar(staging, names["graph"], names["sidecar"], sidecar,
                   f"NEST fwRF encoding model (NSD fMRI), subject {subject}, ROI {roi}: uint8 images "
                   f"[N, 3, S, S] -> responses [N, {sum(split_voxels)}] (z-scored betas of the ROI's voxels, "
                   f"in the order of the True voxels of metadata fmri/roi_mask_volume).")
    record_graph(manifest, FWRF, subject, roi, {**names, "voxels": sum(split_voxels), "parity": parity,
                                                "resize_parity": resize_parity})


def _fwrf_contract(names: dict, subject: int, roi: str, voxels: int, metadata: dict, graph_bytes: int) -> dict:
    """The graph's contract (contract.py): images in, one array of voxels out, labelled by their
    flat positions in the 3-D volume of metadata fmri/roi_mask_volume (C order)."""
    mask = np.asarray(nested_value(metadata, "fmri/roi_mask_volume"))
    positions = np.flatnonzero(mask).tolist() if mask.ndim == 3 else None
    return contract_header(
        role="fwrf", model_id=FWRF, subject=subject, roi=roi, graph=names["graph"],
        inputs=[IMAGES_INPUT],
        outputs=[{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", voxels],
                  "arrays": [{"name": OUTPUT_NAME, "columns": [0, voxels], "shape": ["N", voxels],
                              "axes": [{"name": "voxels", "size": voxels, "labels": positions,
                                        "labels_are": "flat C-order indices into fmri/roi_mask_volume "
                                                      f"{list(mask.shape) if mask.ndim == 3 else ''}"}]}]}],
        preprocessing=["resize to 227x227 (bilinear, antialias, half-pixel centres, as torchvision's Resize "
                       "on integer tensors), rounded half to even; non-square images are squashed to it, as "
                       "upstream's fwRF transform does", "divide by 255",
                       "subtract the checkpoint's stim_mean"],
        recommended_batch=fwrf_batch_size(voxels),
        memory={"weights_bytes": int(graph_bytes), "working_bytes_per_image": fwrf_working_bytes(voxels)})


def _measure_parity(reference, graph_path: Path, seed: int) -> dict[str, Any]:
    """Network and end-to-end parity (see parity.py) on synthetic images at 227 (no resize) and
    one other size; refuses the graph if the network is outside its tolerance."""
    from .onnx_graph import RESIZED_PIXELS, probe_session
    from .synthetic import synthetic_images
    from .torch_reference import float64_copy
    in_float64 = float64_copy(reference)
    session = probe_session(graph_path, [RESIZED_PIXELS])
    results = {}
    for size in PARITY_SIZES:
        images = synthetic_images(PARITY_IMAGES, size, seed=seed + size)
        responses, pixels = session.run(None, {INPUT_NAME: images})
        same_pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)  # at 227: no resize upstream
        on_same_pixels = reference(same_pixels)
        # where the pixels are the images (the native size), the end-to-end reference is the same run
        end_to_end = on_same_pixels if np.array_equal(same_pixels, images) else reference(images)
        record = {**compare(end_to_end, responses),
                  "network": network_stats(in_float64(same_pixels), on_same_pixels, responses)}
        refuse_network(record, graph_path.name, size)
        results[f"size_{size}"] = record
    return results
