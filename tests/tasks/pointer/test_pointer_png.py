"""The minimal PNG reader against images encoded here, with every scanline filter."""

import struct
import zlib

import numpy as np
import pytest

from jaxguard import png
from jaxguard.png import encode_png


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _filtered_png(image: np.ndarray, filters, color_type: int, depth: int = 8) -> bytes:
    """PNG bytes with scanline r filtered by filters[r % len(filters)] (the PNG spec's rules)."""
    height, width, channels = image.shape
    raw = image.reshape(height, width * channels).astype(int)
    lines = []
    for r in range(height):
        kind = filters[r % len(filters)]
        prior = raw[r - 1] if r else np.zeros_like(raw[r])
        out = []
        for i, value in enumerate(raw[r]):
            left = raw[r][i - channels] if i >= channels else 0
            up_left = prior[i - channels] if i >= channels else 0
            predictor = [
                0,
                left,
                prior[i],
                (left + prior[i]) // 2,
                _paeth(left, prior[i], up_left),
            ][kind]
            out.append((value - predictor) % 256)
        lines.append(bytes([kind, *out]))

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(lines)))
        + chunk(b"IEND", b"")
    )


def test_round_trip_through_the_writer(tmp_path, rng):
    image = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    path.write_bytes(encode_png(image))
    np.testing.assert_array_equal(png.read_png(path), image)
    assert png.read_size(path) == (7, 5)


@pytest.mark.parametrize("filters", [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)])
@pytest.mark.parametrize(("channels", "color_type"), [(1, 0), (2, 4), (3, 2), (4, 6)])
def test_every_filter_is_undone(tmp_path, rng, filters, channels, color_type):
    image = rng.integers(0, 256, (6, 9, channels), dtype=np.uint8)
    path = tmp_path / "f.png"
    path.write_bytes(_filtered_png(image, filters, color_type))
    np.testing.assert_array_equal(png.read_png(path), image)


def test_unsupported_and_broken_files_name_the_file(tmp_path, rng):
    image = rng.integers(0, 256, (4, 4, 1), dtype=np.uint8)
    sixteen_bit = tmp_path / "deep.png"
    sixteen_bit.write_bytes(_filtered_png(image, (0,), 0, depth=16))
    with pytest.raises(png.PngError, match="deep.png: unsupported PNG .bit depth 16"):
        png.read_png(sixteen_bit)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(png.PngError, match="notes.png: not a PNG"):
        png.read_png(text)
    with pytest.raises(FileNotFoundError):
        png.read_png(tmp_path / "missing.png")
