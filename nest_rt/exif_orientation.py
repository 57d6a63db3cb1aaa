"""EXIF orientation: which way up an image is meant to be seen, and the turn that makes it upright.

Cameras store the pixels as the sensor read them and record in EXIF how a viewer must turn them
(orientations 1..8); images are encoded upright, as viewers show them. The orientation is read
wherever the file stores it: a PNG's eXIf chunk may follow its pixels.
"""
from __future__ import annotations

import os
import struct

EXIF_ORIENTATION = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # orientations that swap width and height
_UPRIGHT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
            7: "TRANSVERSE", 8: "ROTATE_90"}  # EXIF orientation -> the PIL.Image.Transpose that undoes it


def swaps_sides(orientation: int) -> bool:
    """Whether turning an image of this orientation upright swaps its width and height."""
    return orientation in _TRANSPOSED


def upright(image, orientation: int):
    """The PIL image turned upright (Pillow's ImageOps.exif_transpose table, with the orientation
    read by read_orientation)."""
    from PIL import Image
    if orientation == 1:
        return image
    return image.transpose(Image.Transpose[_UPRIGHT[orientation]])


def read_orientation(image, handle=None) -> int:
    """The image's EXIF orientation (1: upright), wherever the file stores it. A PNG may store its
    EXIF (eXIf chunk) after the pixels, where Pillow sees it only once the pixels are loaded: a
    PNG file's chunk list is read (``handle``), so that its header scan and its decoding agree,
    and a PIL image is asked once it is loaded (images.pil_to_chw), which gives the same chunk."""
    from PIL import Image
    try:
        if image.format != "PNG":
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        else:  # the eXIf chunk only, never Pillow's getexif (which would decode the pixels to find it)
            data = _png_exif(handle) if handle is not None else image.info.get("exif")
            exif = Image.Exif()
            if data:
                exif.load(data)
            orientation = exif.get(EXIF_ORIENTATION, 1)
        orientation = int(orientation or 1)
    except Exception:  # Pillow's EXIF parser raises many kinds on a malformed block: treat it as upright
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _png_exif(handle) -> bytes | None:
    """The last eXIf chunk of a PNG file, before or after its pixels (the one Pillow keeps once the
    pixels are loaded), found by stepping over the chunks by their lengths: nothing is decoded."""
    handle.seek(8)
    found = None
    while True:
        header = handle.read(8)
        if len(header) < 8:
            return found
        length, kind = struct.unpack(">I4s", header)
        if kind in (b"IEND", b"fcTL") or length > 2**31 - 1:  # Pillow stops at the next APNG frame too
            return found
        if kind == b"eXIf":
            found = b"Exif\x00\x00" + handle.read(length)
            handle.seek(4, os.SEEK_CUR)
        else:
            handle.seek(length + 4, os.SEEK_CUR)
