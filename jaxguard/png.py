"""A minimal PNG writer (8-bit RGB, no dependencies beyond zlib), for figure panels.

jaxguard writes a few image panels (e.g. the cVAE sample ensemble) and does not
depend on an imaging library for that: a PNG file is a signature and three
chunks (IHDR, IDAT with the zlib-compressed scanlines, IEND), each chunk
`length | type | data | CRC-32(type + data)` (PNG specification, ISO/IEC 15948).
"""

from __future__ import annotations

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
