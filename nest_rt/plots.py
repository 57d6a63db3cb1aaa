"""PNG plots of the responses that ``nest-rt encode`` wrote into a run directory (see run.json).

Only the rows being plotted are read, through memory maps, so a plot of a 20,000-image run costs
no more memory than a plot of a 200-image one. matplotlib is an optional extra: ``nest-rt[plot]``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .errors import InvalidParameterError, MissingExtraError
from .image_files import load_image, open_image_array
from .images import square_crop
from .run_files import read_run_record

MAX_THUMBNAILS = 8  # more thumbnails than this would be too small to recognise
DPI = 120
MAP_COLUMNS = 2000  # at most about this many voxel columns are drawn in a map


def plot_run(run_dir, out_dir, outputs=None, images=None, max_images=200) -> list[Path]:
    """Write one ``<name>.png`` per output of the run in ``run_dir``, plus, when ``images`` (rows)
    are given, their thumbnails beside their responses: ``<name>_images.png`` for the first 8,
    ``<name>_images_2.png`` for the next 8, and so on. Returns the paths."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError("nest-rt plot needs matplotlib: pip install 'nest-rt[plot]'") from None
    run_dir = Path(run_dir)
    run = _read_run(run_dir)
    chosen = _choose_outputs(run["outputs"], outputs)
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise InvalidParameterError(f"max_images: expected a positive int, got {max_images!r}")
    count = int(run["inputs"]["count"])
    rows = _choose_rows(images, count, max_images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for output in chosen:
        # a hemisphere without vertices in the selected ROI has nothing to draw
        parts = {label: _read_rows(run_dir, spec["file"], rows) for label, spec in output["arrays"].items()
                 if all(spec["shape"][1:])}
        name = re.sub(r"[^A-Za-z0-9._-]", "_", output["name"])
        title = _title(run, output, rows, count, picked=images is not None)
        eeg = next(iter(parts.values())).ndim >= 3  # time courses (EEG, MEG, Utah array)
        draw_summary, draw_images = (_eeg_summary, _eeg_images) if eeg else (_fmri_summary, _fmri_images)
        figure = Figure(figsize=(13, 5), dpi=DPI, layout="constrained")
        draw_summary(figure, output, parts, rows)
        figure.suptitle(title)
        written.append(_save(figure, out_dir / f"{name}.png"))
        if images is not None:  # pages of up to MAX_THUMBNAILS rows: _images.png, _images_2.png, ...
            for page, first in enumerate(range(0, len(rows), MAX_THUMBNAILS), start=1):
                shown = rows[first:first + MAX_THUMBNAILS]
                thumbnails = [(_thumbnail(run_dir, run, row), _image_label(run, row)) for row in shown]
                part = {label: values[first:first + MAX_THUMBNAILS] for label, values in parts.items()}
                figure = Figure(figsize=(11, 1.2 + 1.9 * len(shown)), dpi=DPI, layout="constrained")
                draw_images(figure, output, part, shown, thumbnails)
                figure.suptitle(title)
                written.append(_save(figure, out_dir / f"{name}_images{'' if page == 1 else f'_{page}'}.png"))
    return written


def _read_run(run_dir: Path) -> dict:
    return read_run_record(run_dir, "run_dir", InvalidParameterError)


def _choose_outputs(available: list[dict], names) -> list[dict]:
    if names is None:
        return available
    names = [names] if isinstance(names, str) else list(names)
    by_name = {output["name"]: output for output in available}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise InvalidParameterError(f"outputs: unknown {unknown}; this run has {sorted(by_name)}")
    return [by_name[name] for name in names]


def _choose_rows(images, count: int, max_images: int) -> list[int]:
    if count < 1:
        raise InvalidParameterError("run_dir: the run encoded no images, so there is nothing to plot")
    if images is None:
        return list(range(min(count, max_images)))
    rows = list(images)
    if not rows or any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) for r in rows):
        raise InvalidParameterError(f"images: expected a non-empty list of row indices, got {images!r}")
    bad = [int(r) for r in rows if not 0 <= r < count]
    if bad:
        raise InvalidParameterError(f"images: rows {bad} out of range; this run has rows 0..{count - 1}")
    if len(rows) > max_images:
        raise InvalidParameterError(f"images: {len(rows)} rows given but max_images is {max_images}")
    return [int(r) for r in rows]


def _read_rows(run_dir: Path, file: str, rows: list[int]) -> np.ndarray:
    """A float32 copy of ``rows`` only; the memory map keeps the rest of the file on disk."""
    path = run_dir / file
    if not path.is_file():
        raise InvalidParameterError(f"run_dir: run.json lists {file}, but {path} does not exist")
    return np.asarray(np.load(path, mmap_mode="r")[rows], dtype=np.float32)


def _thumbnail(run_dir: Path, run: dict, row: int):
    """The image of ``row`` as the models saw it (upright, RGB, centre-cropped), as a small RGB
    array, or None when its file is no longer readable (or is an .h5 array without h5py)."""
    from PIL import Image
    inputs = run["inputs"]
    try:
        if inputs["kind"] == "files":
            pixels = load_image(str(run_dir / inputs["items"][row])).transpose(1, 2, 0)
        else:
            array = inputs["array"]
            images, _ = open_image_array(str(run_dir / array["path"]), array["dataset"])
            pixels = np.asarray(images[run["shard"]["start"] + row])
            pixels = pixels.transpose(1, 2, 0) if array["layout"] == "NCHW" else pixels
            top, left, side = square_crop(*pixels.shape[:2])
            pixels = np.clip(pixels[top:top + side, left:left + side], 0, 255).astype(np.uint8)
        image = Image.fromarray(np.ascontiguousarray(pixels))
        image.thumbnail((160, 160))
        return np.asarray(image)
    except (OSError, ValueError, KeyError, IndexError, ImportError):
        return None


def _image_label(run: dict, row: int) -> str:
    """Which input a row is: the file's name, or the array file and its index."""
    inputs = run["inputs"]
    try:
        if inputs["kind"] == "files":
            return Path(inputs["items"][row]).name
        return f"{Path(inputs['array']['path']).name}[{run['shard']['start'] + row}]"
    except (KeyError, IndexError, TypeError):
        return ""


def _title(run: dict, output: dict, rows: list[int], count: int, picked: bool) -> str:
    selection = ", ".join(f"{key} {_short(value)}" for key, value in output["selection"].items())
    if picked:
        shown = f"images {_short(rows)}"
    else:
        shown = f"all {count} images" if len(rows) == count else f"first {len(rows)} of {count} images"
    return (f"{output['name']}\nmodel {output['model_id']}, subject {output['subject']}, "
            f"selection: {selection or 'all'}; {shown} of '{run.get('imageset', '?')}'")


def _short(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if len(value) <= 4 else f"({len(value)} selected)"
    return str(value)


def _course_axes(output: dict, channel_count: int, time_count: int):
    """(times, row labels, row axis name) of a [.., rows, times] output: EEG channels, MEG
    sensors, Utah-array electrodes, from the run record's axes."""
    axes = output.get("axes", {})
    times = np.asarray(axes.get("times") or np.arange(time_count), dtype=float)
    names = [name for name in axes if name != "times"]
    name = names[-1] if names else "channels"
    labels = axes.get(name) if isinstance(axes.get(name), list) else None
    return times, [str(label) for label in labels] if labels else [str(c) for c in range(channel_count)], name


def _butterfly(ax, times, courses: np.ndarray, label: str, rows: str) -> None:
    """One thin line per channel (sensor, electrode), their mean bold."""
    ax.plot(times, courses.T, linewidth=0.6, alpha=0.6)
    ax.plot(times, courses.mean(axis=0), color="black", linewidth=2.2, label=f"mean of {rows}")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set(xlabel="time (s)", ylabel="response (a.u.)", title=label, xlim=(times[0], times[-1]))
    ax.legend(loc="upper right", fontsize="small")


def _averaged(output: dict, responses: np.ndarray) -> tuple[np.ndarray, str]:
    """[N, ..., rows, times] -> [N, rows, times], averaging the axes between (EEG repetitions,
    MEG splits); and what was averaged, in words."""
    middle = [name for name in output.get("axes", {})][:responses.ndim - 3]
    averaged = responses.mean(axis=tuple(range(1, responses.ndim - 2))) if responses.ndim > 3 else responses
    return averaged, (", mean of " + " and ".join(middle)) if middle else ""


def _eeg_summary(figure, output: dict, parts: dict, rows: list[int]) -> None:
    per_image, averaged = _averaged(output, parts["responses"])
    mean = per_image.mean(axis=0)  # [C, T]
    times, channels, name = _course_axes(output, *mean.shape)
    left, right = figure.subplots(1, 2, width_ratios=[1, 1.2])
    _butterfly(left, times, mean, f"butterfly: {len(channels)} {name}, mean of images{averaged}", name)
    limit = float(np.abs(mean).max()) or 1.0
    image = right.imshow(mean, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest",
                         extent=(times[0], times[-1], len(channels) - 0.5, -0.5))
    if len(channels) <= 70:
        right.set_yticks(range(len(channels)), channels, fontsize=6 if len(channels) > 20 else 9)
    right.set(xlabel="time (s)", ylabel=name, title=f"{name} x time (mean of images{averaged})")
    figure.colorbar(image, ax=right, label="response (a.u.)")


def _eeg_images(figure, output: dict, parts: dict, rows: list[int], thumbnails: list) -> None:
    responses, averaged = _averaged(output, parts["responses"])
    times, channels, name = _course_axes(output, *responses.shape[1:])
    grid = figure.subplots(len(rows), 2, width_ratios=[1, 5], squeeze=False)
    for (thumb_ax, curve_ax), row, thumbnail, courses in zip(grid, rows, thumbnails, responses):
        _show_thumbnail(thumb_ax, thumbnail, row)
        _butterfly(curve_ax, times, courses, f"image {row}: {len(channels)} {name}{averaged}", name)


def _show_thumbnail(ax, thumbnail: tuple, row: int) -> None:
    """The image as the models saw it, titled with its row and file name."""
    pixels, label = thumbnail
    ax.set_axis_off()
    title = f"image {row}" + (f"\n{label if len(label) <= 28 else label[:12] + '...' + label[-13:]}" if label else "")
    if pixels is None:  # the input file moved since the run: still show the responses
        ax.text(0.5, 0.5, f"{title}\n(not readable)", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        return
    ax.imshow(pixels)
    ax.set_title(title, fontsize=8)


def _fmri_units(label: str) -> str:
    return "voxels" if label == "responses" else f"{label} vertices"


def _fmri_maps(figure, axes, parts: dict, rows: list[int]) -> None:
    # A figure is ~1500 pixels wide: drawing every column of 163,842 vertices only costs time and memory.
    steps = {label: -(-part.shape[1] // MAP_COLUMNS) for label, part in parts.items()}
    shown = {label: part[:, ::steps[label]] for label, part in parts.items()}
    # Shared colour limits (both hemispheres); percentiles so a few outliers don't wash out the map.
    low, high = np.percentile(np.concatenate([part.ravel() for part in shown.values()]), [1, 99])
    for ax, (label, part) in zip(axes, shown.items()):
        units, total, step = _fmri_units(label), parts[label].shape[1], steps[label]
        image = ax.imshow(part, aspect="auto", cmap="viridis", vmin=low, vmax=max(high, low + 1e-6),
                          interpolation="nearest", extent=(0, total, len(rows) - 0.5, -0.5))
        sampled = f", 1 in {step} drawn" if step > 1 else ""
        ax.set(xlabel=f"{units} (index)", title=f"image x {units} ({total}{sampled})")
        ax.locator_params(axis="x", nbins=5)  # indices up to 163,842 need room
        if len(rows) <= 30:
            ax.set_yticks(range(len(rows)), rows)
    axes[0].set_ylabel("image (row)")
    figure.colorbar(image, ax=list(axes), label="response (a.u.)")


def _fmri_summary(figure, output: dict, parts: dict, rows: list[int]) -> None:
    hist_ax, *map_axes = figure.subplots(1, 1 + len(parts), width_ratios=[1.2] + [2] * len(parts))
    span = (min(part.min() for part in parts.values()), max(part.max() for part in parts.values()))
    for label, part in parts.items():  # the same bins for both hemispheres, so their bars compare
        hist_ax.hist(part.ravel(), bins=60, range=span, alpha=0.6, label=_fmri_units(label))
    units = "voxels" if "responses" in parts else "vertices"
    hist_ax.set(xlabel="response (a.u.)", ylabel=f"count ({units} x images)", title="response histogram")
    hist_ax.legend(fontsize="small")
    _fmri_maps(figure, map_axes, parts, rows)


def _fmri_images(figure, output: dict, parts: dict, rows: list[int], thumbnails: list) -> None:
    # Thumbnails in their own column, one grid row per image, so each sits beside its map row.
    grid = figure.add_gridspec(len(rows), 1 + len(parts), width_ratios=[1] + [4] * len(parts))
    for index, (row, thumbnail) in enumerate(zip(rows, thumbnails)):
        _show_thumbnail(figure.add_subplot(grid[index, 0]), thumbnail, row)
    map_axes = [figure.add_subplot(grid[:, 1 + column]) for column in range(len(parts))]
    _fmri_maps(figure, map_axes, parts, rows)


def _save(figure, path: Path) -> Path:
    """Write through a temporary file in the same folder, so a crash never leaves half a PNG."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        figure.savefig(temporary, format="png", dpi=DPI)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
