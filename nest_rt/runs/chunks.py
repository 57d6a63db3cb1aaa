"""Chunks encoded and written: each chunk's blocks of rows written where they belong, and the chunk
recorded in progress.json once all its rows are on disk."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import interrupts
from ..encode_loop import as_arrays, iter_responses
from ..models import EncodingModel
from ..run_files import PROGRESS, NpyRows, write_json_atomically
from .inputs import RunInputs
from .outputs import Output


def encode_chunks(inputs: RunInputs, outputs: list[Output], files: list[dict[str, NpyRows]], todo,
                   done: set[int], failed: list[dict], first_row: int, out: Path, device: str,
                   show_progress: bool, total_rows: int, log, workers=None) -> None:
    """Encode the chunks ``todo`` (here, or by Ray ``workers``: see nest_rt.ray) and write each
    block of rows as it comes; a chunk is recorded in progress.json once all its rows are on disk,
    with the images that failed to decode in it (their rows are NaN). Blocks of different chunks
    may arrive interleaved and chunks finish in any order: rows have fixed places, and a chunk
    redone after a lost worker writes the same bytes again."""
    from tqdm.auto import tqdm
    with tqdm(total=total_rows, initial=total_rows - sum(stop - start for _, start, stop in todo),
              unit="img", desc="encoding", disable=not show_progress, smoothing=0.1) as bar:
        models = [output.model for output in outputs]
        items = (workers.encode_chunks(todo, bar) if workers is not None
                 else (item for chunk, start, stop in todo
                       for item in chunk_items(inputs, models, chunk, start, stop, device, bar.update)))
        with contextlib.closing(items):  # an error here (a full disk) stops Ray's workers at once
            _write_items(items, outputs, files, done, failed, first_row, out, log)


def _write_items(items, outputs: list[Output], files: list[dict[str, NpyRows]], done: set[int], failed: list[dict],
                 first_row: int, out: Path, log) -> None:
    """Write each block into its rows; record each chunk once its ChunkDone comes."""
    for item in items:
        if isinstance(item, ChunkDone):
            _record_chunk(item, files, done, failed, first_row, out, log)
        else:
            index, rows, arrays = item
            for array, values in zip(outputs[index].shapes, arrays):
                _write_rows(files[index][array], rows - first_row, values)
        interrupts.raise_if_stopped()


def _record_chunk(item: ChunkDone, files: list[dict[str, NpyRows]], done: set[int], failed: list[dict],
                  first_row: int, out: Path, log) -> None:
    """A chunk's rows are all written: NaN rows for its images that failed, then the files synced
    and the chunk recorded as done."""
    for failure in item.failed:  # no silent responses to an image that was never seen
        for per_output in files:
            for handle in per_output.values():
                handle.write(failure["row"] - first_row, np.full((1, *handle.shape[1:]), np.nan, np.float32))
        log(f"left out: {failure['path']}: {failure['reason']}; its row {failure['row']} holds NaN")
    for per_output in files:
        for handle in per_output.values():
            handle.sync()
    done.add(item.chunk)
    failed.extend(item.failed)
    write_json_atomically(out / PROGRESS, progress_record(done, failed))


def progress_record(done, failed: list[dict]) -> dict[str, Any]:
    """progress.json: the same bytes however the chunks were run (in any order, sharded and merged)."""
    return {"chunks_done": sorted(done), "failed": sorted(failed, key=lambda failure: failure["row"])}


@dataclass
class ChunkDone:
    """The last item of a chunk's stream: every block of it came before, and these images of
    it (as {row, path, reason}) failed to decode."""
    chunk: int
    failed: list[dict]


def chunk_items(inputs: RunInputs, models: list[EncodingModel], chunk: int, start: int, stop: int, device: str,
                on_batch=None):
    """Images start:stop encoded: yields (model index, rows of the run, arrays) blocks, then a
    ChunkDone. The same batches wherever the chunk runs (here or in a Ray worker), so the same
    bytes."""
    failed: list[dict] = []
    stimulus, order = inputs.stimulus(start, stop, failed)

    def name_images(positions: np.ndarray) -> str:  # the stimulus is sorted by image size: its rows say
        rows = (order[positions] + start).tolist()
        if inputs.images is None:
            return f"rows {rows} of {inputs.array_info['path']}"
        return f"row{'s' * (len(rows) > 1)} " + ", ".join(f"{row} ({inputs.images.paths[row]})" for row in rows)
    for index, block_start, block_stop, block in iter_responses(models, stimulus, device, on_batch=on_batch,
                                                                name_images=name_images):
        yield index, order[block_start:block_stop] + start, as_arrays(block)
    yield ChunkDone(chunk, failed)


def _write_rows(handle: NpyRows, rows: np.ndarray, values: np.ndarray) -> None:
    """Write values to possibly scattered rows, one contiguous run at a time."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for run_start, run_stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
        handle.write(int(rows[run_start]), values[run_start:run_stop])
