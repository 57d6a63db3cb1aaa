"""The batched encode loop: one or several loaded models over the same images.

``encode_models`` fills preallocated arrays; ``iter_responses`` yields each model's blocks as
they come (the runs write them to disk). Each batch of images is decoded once, and each
backbone (ViT-B/32, AlexNet, untrained AlexNet) runs once per batch for all the models on it.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from .errors import BundleIntegrityError, NonFiniteOutputError
from .images import Stimulus
from .models import EncodingModel, LinearEncodingModel, StackedModel
from .sessions import resolve_device

# Head weights (a ViT subject's folded PCA matrix alone is 461 MB) stay in memory while those of
# the models encoded together fit this budget. Beyond it (ten EEG subjects: 4.6 GB) the features
# of a chunk of images are kept instead, within _STREAMED_CHUNK_BYTES (472 MB: 256 images of
# ViT-B/32's 460,800 features, 573 of AlexNet's 205,672; the features of every backbone in use
# count), and each head's weights are read from disk when its turn comes, then dropped: memory
# stays near one subject's, and each read is shared by the chunk's images.
_RESIDENT_WEIGHT_BYTES = 1536 * 2**20
_FEATURE_BYTES = 4  # float32
_STREAMED_CHUNK_BYTES = 256 * 460_800 * _FEATURE_BYTES  # 256 images of ViT-B/32, where it was measured


def streamed_chunk_size(features: int) -> int:
    """Images per streamed chunk when the backbones in use give ``features`` per image together:
    as many as fit the budget, at least one."""
    return max(1, _STREAMED_CHUNK_BYTES // (_FEATURE_BYTES * features))


def encode_models(models: list[EncodingModel], images: Any, device: str = "auto",
                  show_progress: bool = True) -> list:
    """Responses of every model for the same images, in preallocated arrays."""
    stimulus = images if isinstance(images, Stimulus) else Stimulus(images)
    outputs = [model.allocate(stimulus.count) for model in models]
    with _progress(stimulus.count, show_progress and stimulus.count > min(m.batch_size for m in models)) as bar:
        for index, start, stop, block in iter_responses(models, stimulus, device, on_batch=bar.update):
            for target, values in zip(as_arrays(outputs[index]), as_arrays(block)):
                target[start:stop] = values
    return outputs


def iter_responses(models: list[EncodingModel], stimulus: Stimulus, device: str = "auto",
                   on_batch: Callable[[int], Any] | None = None,
                   name_images: Callable[[np.ndarray], str] = lambda positions: f"images {positions.tolist()}"
                   ) -> Iterator[tuple[int, int, int, Any]]:
    """Yield ``(model_index, start, stop, block)``: the responses of model ``model_index`` to images
    ``start:stop``, checked to be finite.

    Images are decoded once per batch; models that share a backbone share its features
    for each batch. ``on_batch(n)`` is called after each decoded batch of n images.
    ``name_images(positions)`` names images of the stimulus in errors (default: their positions,
    which are the caller's indices when the stimulus is the caller's own list or array).
    """
    devices = [model.device if device == "auto" else resolve_device(device) for model in models]
    stream_heads = _stream_heads(models)
    # Decode at the largest batch size, then run each model on slices of its own batch size,
    # so a large fwRF ROI (batch 1) does not shrink the linear models' batches. Streamed heads
    # run once over the whole decoded chunk, so that each read of their weights serves all its images.
    batch_size = _streamed_chunk(models) if stream_heads else max(model.batch_size for model in models)
    shapes = [[array.shape[1:] for array in as_arrays(model.allocate(0))] for model in models]
    for batch in stimulus.batches(batch_size):
        shared: dict = {"stream_heads": stream_heads}
        for index, (model, model_device) in enumerate(zip(models, devices)):
            step = len(batch.images) if stream_heads and _linear_parts(model) else model.batch_size
            for start in range(0, len(batch.images), step):
                stop = min(start + step, len(batch.images))
                shared["position"] = (start, stop)
                block = model.run_batch(batch.images[start:stop], model_device, shared)
                _check_block(block, batch.start + start, stop - start, shapes[index], model, name_images)
                yield index, batch.start + start, batch.start + stop, block
        if on_batch is not None:
            on_batch(batch.stop - batch.start)


def _stream_heads(models: list[EncodingModel]) -> bool:
    """Whether the linear models' heads are too large to keep in memory together."""
    linear = [part for model in models for part in _linear_parts(model)]
    heads = {id(model.head): model.head for model in linear}
    total = sum(head.nbytes for head in heads.values()) + sum(model.weight_bytes for model in linear)
    if len(linear) < 2 or total <= _RESIDENT_WEIGHT_BYTES:
        return False
    for model in linear:  # weights kept by earlier calls would defeat the purpose
        model.release_weights()
    return True


def _streamed_chunk(models: list[EncodingModel]) -> int:
    """Images per streamed chunk: the features of a chunk are kept for every backbone in use."""
    backbones = {id(part.backbone): part.backbone for model in models for part in _linear_parts(model)}
    return streamed_chunk_size(sum(backbone.features for backbone in backbones.values()))


def _linear_parts(model: EncodingModel) -> list[LinearEncodingModel]:
    if isinstance(model, StackedModel):
        return model.parts
    return [model] if isinstance(model, LinearEncodingModel) else []


def as_arrays(block) -> tuple:
    """A model's block (or allocated output) as a tuple of arrays: fsaverage gives (lh, rh)."""
    return block if isinstance(block, tuple) else (block,)


def _check_block(block, start: int, count: int, shapes: list[tuple], model: EncodingModel,
                 name_images: Callable[[np.ndarray], str]) -> None:
    """A block must have the model's declared shape (else its rows would land in the wrong place)
    and only finite values."""
    found = [values.shape for values in as_arrays(block)]
    if found != [(count, *shape) for shape in shapes]:
        raise BundleIntegrityError(f"{model.describe_output()} gave blocks of shape {found} for {count} images, "
                                   f"the bundle declares {[(count, *shape) for shape in shapes]}; re-export the bundle")
    for values in as_arrays(block):
        finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite) + start
            raise NonFiniteOutputError(f"{model.describe_output()} produced NaN or infinite responses "
                                       f"for {name_images(bad[:10])}")


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="img", disable=not enabled, desc="encoding")
