"""Minimal PNG writing and reading with NumPy and zlib only (no imaging library).

Writing (`encode_png`, `write_png`): 8-bit RGB, for figure panels such as the cVAE
sample ensemble. A PNG file is a signature and chunks (IHDR, IDAT with the
zlib-compressed scanlines, IEND), each `length | type | data | CRC-32(type + data)`
(PNG specification, ISO/IEC 15948).

Reading (`read_png`, `read_size`), for the pointer task's user images: 8-bit samples,
no interlacing, colour types grey (0), RGB (2), grey + alpha (4) and RGBA (6), all
five scanline filters. Anything else (palette images, 16-bit or 1/2/4-bit samples,
Adam7 interlacing) fails with a `PngError` naming the file and what to convert it to.
The None, Sub and Up filters are undone with NumPy; Average and Paeth depend on the
byte just decoded, so they run as Python loops over a row (about a second per
megapixel): fine for hundreds of images, slow for a large data set.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BIT_DEPTH = 8
_COLOR_TYPE_RGB = 2
_FILTER_NONE = b"\x00"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray) -> bytes:
    """The PNG bytes of an RGB image.

    Args:
      image: `[height, width, 3]` uint8, or float in `[0, 1]` (clipped, then scaled to 0-255).

    Returns:
      The file contents.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"encode_png: `image` must be [height, width, 3], got {image.shape}.")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise TypeError(f"encode_png: `image` must be uint8 or float, got {image.dtype}.")
        # NaN would cast to an arbitrary byte; show it as black.
        image = np.nan_to_num(image, nan=0.0)
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    height, width, _ = image.shape
    header = struct.pack(">IIBBBBB", width, height, _BIT_DEPTH, _COLOR_TYPE_RGB, 0, 0, 0)
    # Every scanline starts with its filter type; 0 stores the bytes unchanged.
    scanlines = b"".join(_FILTER_NONE + row.tobytes() for row in image)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(scanlines, 9))
        + _chunk(b"IEND", b"")
    )


def write_png(path: str, image: np.ndarray) -> None:
    """Writes `image` (see `encode_png`) to `path`."""
    with open(path, "wb") as f:
        f.write(encode_png(image))


# ----------------------------------------------------------------------------- reading

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel.


class PngError(ValueError):
    """A file that is not a PNG this reader supports; the message names the file."""


def _chunks(data: bytes, path: str):
    position = len(_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        if len(body) != length:
            raise PngError(f"{path}: truncated PNG ({kind.decode(errors='replace')} chunk)")
        yield kind, body
        position += 12 + length  # Length, type, body, CRC.


def _paeth_row(filtered: bytearray, previous: bytes, bpp: int) -> bytearray:
    row = bytearray(filtered)
    for i in range(len(row)):
        left = row[i - bpp] if i >= bpp else 0
        up = previous[i]
        up_left = previous[i - bpp] if i >= bpp else 0
        estimate = left + up - up_left
        d_left, d_up, d_up_left = abs(estimate - left), abs(estimate - up), abs(estimate - up_left)
        if d_left <= d_up and d_left <= d_up_left:
            predictor = left
        elif d_up <= d_up_left:
            predictor = up
        else:
            predictor = up_left
        row[i] = (row[i] + predictor) & 0xFF
    return row


def _average_row(filtered: bytearray, previous: bytes, bpp: int) -> bytearray:
    row = bytearray(filtered)
    for i in range(len(row)):
        left = row[i - bpp] if i >= bpp else 0
        row[i] = (row[i] + ((left + previous[i]) >> 1)) & 0xFF
    return row


def _unfilter(raw: bytes, height: int, stride: int, bpp: int, path: str) -> np.ndarray:
    """Undoes the per-scanline filters: `[height, stride]` uint8 samples."""
    if len(raw) != height * (stride + 1):
        raise PngError(
            f"{path}: image data holds {len(raw)} bytes, expected {height * (stride + 1)}"
        )
    lines = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    previous = np.zeros(stride, np.uint8)
    for r in range(height):
        kind, filtered = int(lines[r, 0]), lines[r, 1:]
        if kind == 0:
            row = filtered.copy()
        elif kind == 1:
            # Why: uint8 cumulative sums wrap modulo 256, which is exactly PNG's arithmetic.
            pixels = filtered.reshape(-1, bpp)
            row = np.cumsum(pixels, axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:
            row = filtered + previous  # uint8 addition wraps modulo 256.
        elif kind in (3, 4):
            undo = _average_row if kind == 3 else _paeth_row
            row = np.frombuffer(undo(bytearray(filtered), previous.tobytes(), bpp), np.uint8)
        else:
            raise PngError(f"{path}: scanline {r} has unknown filter type {kind}")
        out[r] = row
        previous = out[r]
    return out


def read_size(path: str | os.PathLike) -> tuple[int, int]:
    """`(height, width)` of a PNG file, from its header alone."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        start = f.read(24)  # Signature, IHDR length and type, width, height.
    if not start.startswith(_SIGNATURE) or start[12:16] != b"IHDR":
        raise PngError(f"{path}: not a PNG file")
    width, height = struct.unpack(">II", start[16:24])
    return height, width


def read_png(path: str | os.PathLike) -> np.ndarray:
    """The pixels of an 8-bit, non-interlaced PNG file.

    Args:
      path: the file.

    Returns:
      `[height, width, channels]` uint8, channels 1 (grey), 2 (grey, alpha), 3 (RGB) or
      4 (RGBA), as stored.

    Raises:
      FileNotFoundError: no such file.
      PngError: not a PNG, or a kind this reader does not support.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_SIGNATURE):
        raise PngError(f"{path}: not a PNG file")
    header, compressed = None, []
    for kind, body in _chunks(data, path):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
    if header is None or not compressed:
        raise PngError(f"{path}: PNG without header or image data")
    width, height, depth, color_type, _, _, interlace = header
    if depth != 8 or color_type not in _CHANNELS or interlace:
        raise PngError(
            f"{path}: unsupported PNG (bit depth {depth}, colour type {color_type}, interlace "
            f"{interlace}); save it as 8-bit grey or RGB(A) without interlacing"
        )
    channels = _CHANNELS[color_type]
    try:
        raw = zlib.decompress(b"".join(compressed))
    except zlib.error as error:
        raise PngError(f"{path}: corrupt image data ({error})") from None
    samples = _unfilter(raw, height, width * channels, channels, path)
    return samples.reshape(height, width, channels)
