"""Turn what users pass as images into validated uint8 ``[n, 3, S, S]`` batches.

Accepted inputs:
- a numpy array ``[N, 3, S, S]`` (upstream's layout) or ``[N, S, S, 3]`` (NHWC), of dtype uint8
  or any integer dtype with values in 0..255;
- a PIL image, an image file path, or a list/tuple mixing PIL images, paths and 3-D arrays
  (``[3, S, S]`` or ``[S, S, 3]``). PIL images in other modes (L, RGBA, P, ...) are converted to RGB.

Every check runs before any model work starts, so a bad input never leaves partial results.
Images are converted one batch at a time, so memory stays bounded for any N.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .errors import StimulusError, StimulusFileNotFoundError, StimulusTypeError

_EXPECTED = "expected uint8 (or integer 0..255) images shaped [N, 3, S, S] or [N, S, S, 3] with S x S square"


@dataclass(frozen=True)
class Batch:
    start: int
    stop: int
    images: np.ndarray  # uint8 [n, 3, S, S], C-contiguous


class Stimulus:
    """A validated collection of N square RGB images, served in batches."""

    def __init__(self, images: Any, name: str = "images"):
        self._name = name
        if isinstance(images, np.ndarray):
            self._array, self._channels_last = _validate_array(images, name)
            self._items = None
            self.count = images.shape[0]
        else:
            self._array = None
            self._items = _validate_items(images, name)
            self.count = len(self._items)

    @classmethod
    def lazy(cls, sides: Sequence[int], load: Callable[[int], np.ndarray], name: str = "images") -> "Stimulus":
        """Images known by their square side and decoded only when their batch comes:
        ``load(i)`` returns image i as uint8 [3, S, S] (the caller has validated them)."""
        stimulus = cls.__new__(cls)
        stimulus._name, stimulus._array, stimulus.count = name, None, len(sides)
        stimulus._items = [_Item(side, lambda index=index: load(index)) for index, side in enumerate(sides)]
        return stimulus

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Yield consecutive batches of at most ``batch_size`` equally sized images."""
        if self._array is not None:
            for start in range(0, self.count, batch_size):
                stop = min(start + batch_size, self.count)
                block = self._array[start:stop]
                if self._channels_last:
                    block = block.transpose(0, 3, 1, 2)
                yield Batch(start, stop, np.ascontiguousarray(block, dtype=np.uint8))
            return
        start = 0
        while start < self.count:
            size = self._items[start].size
            stop = start + 1
            while stop < self.count and stop - start < batch_size and self._items[stop].size == size:
                stop += 1
            block = np.stack([item.load() for item in self._items[start:stop]])
            yield Batch(start, stop, block)
            start = stop


def _validate_array(images: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    if images.ndim != 4:
        raise StimulusError(f"{name} must be 4-D, got shape {images.shape}; {_EXPECTED} "
                            f"(for one image use {name}[None])")
    if images.shape[0] == 0:
        raise StimulusError(f"{name} is empty (shape {images.shape}); {_EXPECTED}")
    channels_last = is_channels_last(images.shape, name)
    height, width = images.shape[1:3] if channels_last else images.shape[2:4]
    if height != width:
        raise StimulusError(f"{name} must be square, got height {height} and width {width}; "
                            "crop or resize them to S x S first")
    if height == 0:
        raise StimulusError(f"{name} has images of size 0 x 0 (shape {images.shape})")
    _validate_values(images, name)
    return images, channels_last


def is_channels_last(shape: Sequence[int], name: str = "images") -> bool:
    """Whether a 4-D image array is NHWC rather than NCHW: its colour axis is 1, else 3."""
    if shape[1] == 3:
        return False
    if shape[3] == 3:
        return True
    raise StimulusError(f"{name} must have 3 colour channels on axis 1 (NCHW) or axis 3 (NHWC), "
                        f"got shape {tuple(shape)}")


def _validate_values(images: np.ndarray, name: str) -> None:
    if images.dtype == np.uint8:
        return
    if images.dtype == np.bool_ or not np.issubdtype(images.dtype, np.integer):
        raise StimulusTypeError(
            f"{name} must hold integers 0..255 (dtype uint8 preferred), got dtype {images.dtype}; "
            "convert float images with np.clip(np.round(x), 0, 255).astype(np.uint8) "
            "(multiply by 255 first if they are in 0..1)")
    low, high = int(images.min()), int(images.max())
    if low < 0 or high > 255:
        raise StimulusError(f"{name} values must lie in 0..255, got min {low} and max {high}")


@dataclass(frozen=True)
class _Item:
    size: int
    load: Callable[[], np.ndarray]  # decodes the image when its batch comes


def _validate_items(images: Any, name: str) -> list[_Item]:
    if _is_single_image(images):
        images = [images]
    if not isinstance(images, (list, tuple)):
        raise StimulusTypeError(f"{name} must be a numpy array, a PIL image, an image path, or a "
                                f"list of those; got {type(images).__name__}")
    if len(images) == 0:
        raise StimulusError(f"{name} is an empty list; {_EXPECTED}")
    return [_validate_item(item, f"{name}[{index}]") for index, item in enumerate(images)]


def _is_single_image(obj: Any) -> bool:
    return isinstance(obj, (str, os.PathLike)) or _is_pil(obj)


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pillow is a runtime dependency, but keep arrays usable without it
        return False
    return isinstance(obj, Image.Image)


def _validate_item(item: Any, name: str) -> _Item:
    if isinstance(item, np.ndarray):
        if item.ndim != 3:
            raise StimulusError(f"{name} must be one 3-D image [3, S, S] or [S, S, 3] inside a list, "
                                f"got shape {item.shape}")
        array, channels_last = _validate_array(item[None], name)
        chw = array[0].transpose(2, 0, 1) if channels_last else array[0]
        return _Item(chw.shape[1], lambda: np.ascontiguousarray(chw, dtype=np.uint8))
    if isinstance(item, (str, os.PathLike)):
        return _path_item(os.fspath(item), name)
    if _is_pil(item):
        _require_square(item.size, name)
        return _Item(item.size[0], lambda: pil_to_chw(item))
    raise StimulusTypeError(f"{name} must be a numpy array, a PIL image or an image path; "
                            f"got {type(item).__name__}")


def _path_item(path: str, name: str) -> _Item:
    from PIL import Image, UnidentifiedImageError
    if not os.path.isfile(path):
        raise StimulusFileNotFoundError(f"{name}: no such image file: {path}")
    try:
        with Image.open(path) as image:  # reads the header only
            size = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise StimulusFileNotFoundError(f"{name}: cannot read {path} as an image ({exc})") from exc
    _require_square(size, f"{name} ({path})")

    def load() -> np.ndarray:
        try:
            with Image.open(path) as image:
                return pil_to_chw(image)
        except (UnidentifiedImageError, OSError) as exc:  # e.g. a truncated file: only its header was read
            raise StimulusFileNotFoundError(f"{name}: cannot decode {path} ({exc})") from exc
    return _Item(size[0], load)


def _require_square(size: Sequence[int], name: str) -> None:
    width, height = size
    if width != height:
        raise StimulusError(f"{name} must be square, got width {width} and height {height}; "
                            "crop or resize it to S x S first")


def pil_to_chw(image) -> np.ndarray:
    """A PIL image (any mode) as uint8 [3, H, W]."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))
