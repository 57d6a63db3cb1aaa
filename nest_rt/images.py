"""Turn what users pass as images into validated uint8 ``[n, 3, S, S]`` batches.

Accepted inputs:
- a numpy array ``[N, 3, S, S]`` (upstream's layout) or ``[N, S, S, 3]`` (NHWC), of dtype uint8
  or any integer dtype with values in 0..255;
- a PIL image, an image file path, or a list/tuple mixing PIL images, paths and 3-D arrays
  (``[3, S, S]`` or ``[S, S, 3]``). Images are turned upright by their EXIF orientation (as
  viewers show phone photos), wherever the file stores it (a PNG's eXIf chunk may follow its
  pixels), the same for a path and a PIL image; 16-bit greyscale is reduced to 8 bits (its high byte, as Pillow
  reduces 16-bit RGB), and other modes (L, RGBA, P, CMYK, ...) are converted to RGB; 32-bit
  integer and float images are refused (they have no standard 8-bit range).

Images must be square, as upstream's models assume; ``center_crop=True`` crops the others to
their central square (the crop a file gets from ``nest-rt encode --center-crop``).

Only regular files are opened (a FIFO, whose open waits for a writer, or a device is refused,
never opened), and images over the decompression-bomb limit (NEST_RT_MAX_IMAGE_PIXELS) are
refused with how to raise it. Every check runs before any model work starts, so a bad input
never leaves partial results. Images are converted one batch at a time, so memory stays bounded
for any N.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .errors import InvalidParameterError, StimulusError, StimulusFileNotFoundError, StimulusTypeError
from .exif_orientation import read_orientation, swaps_sides, upright
from .paths import NotARegularFile, not_regular_kind, open_regular

_EXPECTED = "expected uint8 (or integer 0..255) images shaped [N, 3, S, S] or [N, S, S, 3] with S x S square"


# Decoded images of a batch, and the float copy the graph's resize makes of them, grow with the
# square of the side: an 8000 x 8000 photo is 192 MB as uint8 and about 1 GB inside the graph.
# Batches hold at most this many pixels per image plane (64 M: one 8000 x 8000 photo, or 371
# images of NSD's 425 x 425; a longer batch or streamed chunk is cut there).
MAX_BATCH_PIXELS = 64 * 2**20


@dataclass(frozen=True)
class Batch:
    start: int
    stop: int
    images: np.ndarray  # uint8 [n, 3, S, S], C-contiguous


class Stimulus:
    """A validated collection of N square RGB images, served in batches."""

    def __init__(self, images: Any, name: str = "images", center_crop: bool = False):
        if not isinstance(center_crop, bool):
            raise StimulusTypeError(f"center_crop must be a bool, got {type(center_crop).__name__}")
        self._name = name
        if isinstance(images, np.ndarray):
            self._array, self._channels_last = _validate_array(images, name, center_crop)
            self._items = None
            self.count = images.shape[0]
        else:
            self._array = None
            self._items = _validate_items(images, name, center_crop)
            self.count = len(self._items)

    @classmethod
    def lazy(cls, sides: Sequence[int], load: Callable[[int], np.ndarray], name: str = "images") -> "Stimulus":
        """Images known by their square side and decoded only when their batch comes:
        ``load(i)`` returns image i as uint8 [3, S, S] (the caller has validated them)."""
        stimulus = cls.__new__(cls)
        stimulus._name, stimulus._array, stimulus.count = name, None, len(sides)
        stimulus._items = [_Item(side, lambda index=index: load(index)) for index, side in enumerate(sides)]
        return stimulus

    def batches(self, batch_size: int, max_pixels: int | None = None) -> Iterator[Batch]:
        """Yield consecutive batches of at most ``batch_size`` equally sized images and at most
        ``max_pixels`` pixels (default MAX_BATCH_PIXELS; at least one image): memory stays
        bounded for large images."""
        max_pixels = max_pixels or MAX_BATCH_PIXELS
        if self._array is not None:
            side = square_crop(*self._array.shape[1:3] if self._channels_last else self._array.shape[2:4])[2]
            step = max(1, min(batch_size, max_pixels // (side * side)))
            for start in range(0, self.count, step):
                stop = min(start + step, self.count)
                yield Batch(start, stop, _square_block(self._array[start:stop], self._channels_last))
            return
        start = 0
        while start < self.count:
            size = self._items[start].size
            step = max(1, min(batch_size, max_pixels // (size * size)))
            stop = start + 1
            while stop < self.count and stop - start < step and self._items[stop].size == size:
                stop += 1
            block = np.stack([item.load() for item in self._items[start:stop]])
            yield Batch(start, stop, block)
            start = stop


def square_crop(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the central square of an image: the one crop rule of nest_rt."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def _square_block(block: np.ndarray, channels_last: bool) -> np.ndarray:
    """uint8 [n, 3, S, S] from a block of the input array, centre-cropped if it is not square."""
    if channels_last:
        block = block.transpose(0, 3, 1, 2)
    top, left, side = square_crop(*block.shape[2:4])
    return np.ascontiguousarray(block[:, :, top:top + side, left:left + side], dtype=np.uint8)


def _validate_array(images: np.ndarray, name: str, center_crop: bool = False) -> tuple[np.ndarray, bool]:
    if images.ndim != 4:
        raise StimulusError(f"{name} must be 4-D, got shape {images.shape}; {_EXPECTED} "
                            f"(for one image use {name}[None])")
    if images.shape[0] == 0:
        raise StimulusError(f"{name} is empty (shape {images.shape}); {_EXPECTED}")
    channels_last = is_channels_last(images.shape, name)
    height, width = images.shape[1:3] if channels_last else images.shape[2:4]
    if height != width and not center_crop:
        raise StimulusError(f"{name} must be square, got height {height} and width {width}; "
                            "pass center_crop=True to crop them to their central square, or crop or resize them first")
    if min(height, width) == 0:
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
    size: int                       # the side of the (cropped) square
    load: Callable[[], np.ndarray]  # decodes the image when its batch comes


def _validate_items(images: Any, name: str, center_crop: bool) -> list[_Item]:
    if _is_single_image(images):
        images = [images]
    if not isinstance(images, (list, tuple)):
        raise StimulusTypeError(f"{name} must be a numpy array, a PIL image, an image path, or a "
                                f"list of those; got {type(images).__name__}")
    if len(images) == 0:
        raise StimulusError(f"{name} is an empty list; {_EXPECTED}")
    return [_validate_item(item, f"{name}[{index}]", center_crop) for index, item in enumerate(images)]


def _is_single_image(obj: Any) -> bool:
    return isinstance(obj, (str, os.PathLike)) or _is_pil(obj)


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pillow is a runtime dependency, but keep arrays usable without it
        return False
    return isinstance(obj, Image.Image)


def _validate_item(item: Any, name: str, center_crop: bool) -> _Item:
    if isinstance(item, np.ndarray):
        if item.ndim != 3:
            raise StimulusError(f"{name} must be one 3-D image [3, S, S] or [S, S, 3] inside a list, "
                                f"got shape {item.shape}")
        array, channels_last = _validate_array(item[None], name, center_crop)
        side = square_crop(*array.shape[1:3] if channels_last else array.shape[2:4])[2]
        return _Item(side, lambda: _square_block(array, channels_last)[0])
    if isinstance(item, (str, os.PathLike)):
        return _path_item(os.fspath(item), name, center_crop)
    if _is_pil(item):
        facts = header_facts(item, name)
        _require_square(facts.size, name, center_crop)
        return _Item(min(facts.size), lambda: pil_to_chw(item, name))
    raise StimulusTypeError(f"{name} must be a numpy array, a PIL image or an image path; "
                            f"got {type(item).__name__}")


def _path_item(path: str, name: str, center_crop: bool) -> _Item:
    if os.path.isdir(path):  # the API returns rows without a record of which file is which: files only
        raise StimulusError(f"{name}: {shown_path(path)} is a folder; encode takes image files, PIL images or "
                            "arrays (pass its files, e.g. sorted(glob.glob('FOLDER/*.png'))), while "
                            "`nest-rt encode FOLDER` encodes folders and records which file is in which row")
    facts = read_header(path, name)
    _require_square(facts.size, f"{name} ({path})", center_crop)
    return _Item(min(facts.size), lambda: load_image_file(path, name, side=min(facts.size)))


def read_header(path: str, name: str = "image") -> "HeaderFacts":
    """Size (upright), mode and EXIF orientation of an image file, from its header."""
    with opened_image(path, name) as (image, handle):
        return header_facts(image, f"{name} ({shown_path(path)})", handle)


def load_image_file(path: str, name: str = "image", side: int | None = None) -> np.ndarray:
    """An image file as uint8 [3, S, S] (upright, RGB, centre-cropped to a square). ``side``: the
    side its header gave when it was checked; a file that decodes to another (replaced since) is
    refused, naming it."""
    with opened_image(path, name) as (image, handle):
        try:
            pixels = pil_to_chw(image, f"{name} ({shown_path(path)})", handle)
        except (OSError, SyntaxError) as exc:  # e.g. a truncated file: only its header was read
            raise _problem(StimulusFileNotFoundError, f"{name}: cannot decode {shown_path(path)} ({exc})",
                           f"cannot decode it ({exc})") from exc
    if side is not None and pixels.shape[1] != side:
        raise _problem(StimulusFileNotFoundError,
                       f"{name}: {shown_path(path)} changed while it was being encoded: its header gave a "
                       f"{side} x {side} square, it now decodes to {pixels.shape[1]} x {pixels.shape[1]}",
                       f"it changed during the run: its header gave a {side} x {side} square, it now "
                       f"decodes to {pixels.shape[1]} x {pixels.shape[1]}")
    return pixels


def _require_square(size: Sequence[int], name: str, center_crop: bool) -> None:
    width, height = size
    if width != height and not center_crop:
        raise StimulusError(f"{name} must be square, got width {width} and height {height}; pass "
                            "center_crop=True to crop it to its central square, or crop or resize it first")


# -- image files: only regular files are opened --------------------------------------------------
# The largest image, in pixels, that is read: Pillow's decompression-bomb limit (twice
# PIL.Image.MAX_IMAGE_PIXELS, 178,956,970 pixels by default), which this variable replaces.
MAX_PIXELS_VARIABLE = "NEST_RT_MAX_IMAGE_PIXELS"
def shown_path(path: str) -> str:
    """A path as it can be printed and stored in JSON: the bytes of a name that is not valid
    UTF-8 are shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _problem(kind: type, message: str, reason: str) -> Exception:
    """An error whose ``reason`` says what is wrong with a file without naming it (for lists of
    rejected files)."""
    error = kind(message)
    error.reason = reason
    return error


def _os_reason(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "a loop of symbolic links"
    if error.errno == errno.ENOENT:
        return "no such file (or a symbolic link to nothing)"
    return error.strerror or str(error)


def open_regular_file(path: str, name: str):
    """``path`` opened for binary reading if it is a regular file. Anything else (a FIFO, whose
    open would wait for a writer forever, a device, a folder) is refused before it is opened, and
    O_NONBLOCK with a second check on the open file covers one swapped in between."""
    try:
        kind = not_regular_kind(os.stat(path).st_mode)  # a device is not even opened
        if kind is None:
            return os.fdopen(open_regular(path, os.O_RDONLY), "rb")
    except NotARegularFile as exc:
        kind = exc.kind
    except OSError as exc:
        raise _problem(StimulusFileNotFoundError, f"{name}: cannot open {shown_path(path)}: {_os_reason(exc)}",
                       f"cannot open it: {_os_reason(exc)}") from exc
    raise _problem(StimulusFileNotFoundError, f"{name}: {shown_path(path)} is {kind}, not a regular file; "
                   "only regular files are read", f"{kind}, not a regular file: not read")


def regular_file_problem(path: str) -> str | None:
    """Why ``path`` is not a readable regular file (a FIFO, a folder, a loop of symbolic links),
    from its status alone; None when it is one."""
    try:
        kind = not_regular_kind(os.stat(path).st_mode)
    except OSError as exc:
        return _os_reason(exc)
    return None if kind is None else f"{kind}, not a regular file"


@contextlib.contextmanager
def opened_image(path: str, name: str):
    """(PIL image, its file) of a regular image file, its header read; Pillow's errors become one
    line naming the file."""
    from PIL import Image, UnidentifiedImageError
    apply_pixel_limit()
    with open_regular_file(path, name) as handle:
        try:
            image = Image.open(handle)
        except Image.DecompressionBombError as exc:
            raise _problem(StimulusError, f"{name}: {shown_path(path)} {_too_large(exc)}", _too_large(exc)) from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise _problem(StimulusFileNotFoundError, f"{name}: cannot read {shown_path(path)} as an image ({exc})",
                           f"cannot read it as an image ({exc})") from exc
        with image:
            yield image, handle


def apply_pixel_limit() -> None:
    """Set Pillow's decompression-bomb limit from NEST_RT_MAX_IMAGE_PIXELS when it is set (a
    number of pixels, or 'none'); otherwise Pillow's own setting stands."""
    from PIL import Image
    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not text:
        return
    if text.lower() == "none":
        Image.MAX_IMAGE_PIXELS = None
        return
    try:
        pixels = int(text.replace("_", ""))
    except ValueError:
        pixels = 0
    if pixels < 1:
        raise InvalidParameterError(f"{MAX_PIXELS_VARIABLE} must be a number of pixels (or 'none' for no limit), "
                                    f"got {text!r}")
    Image.MAX_IMAGE_PIXELS = pixels / 2  # Pillow refuses images over twice this; it warns above it


def _too_large(error: Exception) -> str:
    from PIL import Image
    limit = Image.MAX_IMAGE_PIXELS
    size = re.search(r"\((\d+) pixels\)", str(error))
    return (f"is too large ({int(size[1]):,} pixels)" if size else "is too large") + (
        f": images over {round(2 * limit):,} pixels are refused as possible decompression bombs; if the "
        f"file is trusted, raise the limit: {MAX_PIXELS_VARIABLE}=<pixels> in the environment (or 'none')")


# -- decoding: the one place where images become upright uint8 RGB ------------------------------
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
_NO_8_BIT_RANGE = {"I", "F"}
_VIA = {"La": "LA"}  # modes Pillow converts to RGB only through another (premultiplied alpha first undone)


@dataclass(frozen=True)
class HeaderFacts:
    size: tuple[int, int]  # (width, height) once upright
    mode: str
    orientation: int       # EXIF orientation, 1 when absent (already upright)

    def conversion(self) -> str | None:
        """What decoding changes besides orientation: None for plain 8-bit RGB."""
        if self.mode == "RGB":
            return None
        return f"{self.mode} -> RGB" + (" (16-bit: high byte)" if self.mode in _SIXTEEN_BIT else "")


def header_facts(image, name: str, handle=None) -> HeaderFacts:
    """Size (upright), mode and EXIF orientation of an opened image, from its header (and, for a
    PNG file, ``handle``: its chunk list); refuses modes that have no 8-bit RGB meaning."""
    if image.mode in _NO_8_BIT_RANGE:
        reason = (f"is a {'32-bit integer' if image.mode == 'I' else 'floating-point'} image (mode {image.mode}) "
                  "with no standard 8-bit range; convert it to 8-bit RGB first")
        raise _problem(StimulusTypeError, f"{name} {reason}", reason)
    if not _converts_to_rgb(image.mode):
        reason = f"has mode {image.mode}, which has no conversion to RGB; convert it to RGB first"
        raise _problem(StimulusTypeError, f"{name} {reason}", reason)
    orientation = read_orientation(image, handle)
    width, height = image.size
    return HeaderFacts((height, width) if swaps_sides(orientation) else (width, height), image.mode, orientation)


@functools.lru_cache(maxsize=None)
def _converts_to_rgb(mode: str) -> bool:
    from PIL import Image
    try:
        _to_rgb(Image.new(mode, (1, 1)))
    except ValueError:
        return False
    return True


def pil_to_chw(image, name: str = "image", handle=None) -> np.ndarray:
    """A PIL image (of the file ``handle``, if any) as uint8 [3, S, S]: upright by its EXIF
    orientation, reduced to 8-bit RGB, and centre-cropped to its central square (callers check
    squareness where it is required)."""
    image.load()  # first: a PNG's EXIF may follow its pixels (see exif_orientation.read_orientation)
    rgb = _to_rgb(upright(image, header_facts(image, name, handle).orientation))
    top, left, side = square_crop(rgb.height, rgb.width)
    if side != rgb.width or side != rgb.height:
        rgb = rgb.crop((left, top, left + side, top + side))
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))


def _to_rgb(image):
    """8-bit RGB: 16-bit greyscale by its high byte (as Pillow reduces 16-bit RGB), other modes
    by Pillow's conversion."""
    from PIL import Image
    if image.mode in _SIXTEEN_BIT:
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))  # mode L
    if image.mode in _VIA:
        image = image.convert(_VIA[image.mode])
    return image if image.mode == "RGB" else image.convert("RGB")
