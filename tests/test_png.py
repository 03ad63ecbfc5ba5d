"""jaxguard.png against a PNG decoder and encoder written here from the specification.

`_decode` (zlib + struct, every CRC checked, all five scanline filters) reads what
`encode_png` writes; `_encode` writes 8-bit images with any filter per scanline for
`read_png` to read. Neither shares code with jaxguard.png.
"""

import struct
import zlib

import numpy as np
import pytest

from jaxguard import png

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def _predictor(kind, left, up, up_left):
    if kind == 0:
        return 0
    if kind == 1:
        return left
    if kind == 2:
        return up
    if kind == 3:
        return (left + up) // 2
    estimate = left + up - up_left
    distances = [abs(estimate - left), abs(estimate - up), abs(estimate - up_left)]
    return (left, up, up_left)[distances.index(min(distances))]  # Ties: left, then up.


def _chunks(data):
    """(type, body) of every chunk; checks the signature, lengths and CRCs."""
    assert data[:8] == SIGNATURE
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert len(body) == length and crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        offset += 12 + length
    assert offset == len(data)
    return chunks


def _decode(data):
    """`(pixels [H, W, C] uint8, IHDR fields, chunk types, filter types)` of 8-bit PNG bytes."""
    chunks = _chunks(data)
    fields = struct.unpack(">IIBBBBB", chunks[0][1])
    width, height, depth, colour, _, _, interlace = fields
    assert depth == 8 and interlace == 0
    channels = CHANNELS[colour]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * channels
    assert len(raw) == height * (stride + 1)
    rows, filters, previous = [], [], [0] * stride
    for r in range(height):
        line = raw[r * (stride + 1) : (r + 1) * (stride + 1)]
        kind, row = line[0], []
        for i, value in enumerate(line[1:]):
            left = row[i - channels] if i >= channels else 0
            up_left = previous[i - channels] if i >= channels else 0
            row.append((value + _predictor(kind, left, previous[i], up_left)) % 256)
        rows.append(row)
        filters.append(kind)
        previous = row
    pixels = np.array(rows, np.uint8).reshape(height, width, channels)
    return pixels, fields, [kind for kind, _ in chunks], filters


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _encode(image, filters, colour, *, depth=8, interlace=0, idat_parts=1, extra=()):
    """PNG bytes of `image` [H, W, C], scanline r filtered by `filters[r % len(filters)]`."""
    height, width, channels = image.shape
    stride = width * channels
    samples = image.reshape(height, stride).astype(int)
    lines = []
    for r in range(height):
        kind = filters[r % len(filters)]
        previous = samples[r - 1] if r else np.zeros(stride, int)
        line = [kind]
        for i in range(stride):
            left = samples[r, i - channels] if i >= channels else 0
            up_left = previous[i - channels] if i >= channels else 0
            predictor = _predictor(kind, left, previous[i], up_left)
            line.append((samples[r, i] - predictor) % 256)
        lines.append(bytes(line))
    compressed = zlib.compress(b"".join(lines))
    cut = np.linspace(0, len(compressed), idat_parts + 1).astype(int)
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return (
        SIGNATURE
        + _chunk(b"IHDR", header)
        + b"".join(_chunk(kind, body) for kind, body in extra)
        + b"".join(_chunk(b"IDAT", compressed[a:b]) for a, b in zip(cut[:-1], cut[1:], strict=True))
        + _chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------- writing


def test_encode_png_uint8_decodes_to_the_same_pixels(rng):
    image = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    data = png.encode_png(image)
    pixels, fields, kinds, filters = _decode(data)
    np.testing.assert_array_equal(pixels, image)
    # width, height, bit depth 8, colour type 2 (RGB), compression, filter method, interlace.
    assert fields == (5, 7, 8, 2, 0, 0, 0)
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    assert filters == [0] * 7


def test_encode_png_scales_clips_and_rounds_floats_nan_as_black():
    image = np.array(
        [[[0.0, 0.5, 1.0], [2.0, -1.0, np.nan]], [[0.2, 1 / 255, 0.998], [0.001, 0.003, 0.5]]]
    )
    pixels, *_ = _decode(png.encode_png(image))
    expected = [[[0, 128, 255], [255, 0, 0]], [[51, 1, 254], [0, 1, 128]]]
    np.testing.assert_array_equal(pixels, expected)
    float32, *_ = _decode(png.encode_png(image.astype(np.float32)))
    np.testing.assert_array_equal(float32, expected)


def test_encode_png_one_pixel_and_a_wide_strip(rng):
    for shape in [(1, 1, 3), (1, 300, 3), (300, 1, 3)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_array_equal(_decode(png.encode_png(image))[0], image)


@pytest.mark.parametrize(
    "image, error, message",
    [
        (np.zeros((4, 4)), ValueError, r"\[height, width, 3\], got \(4, 4\)"),
        (np.zeros((4, 4, 4)), ValueError, r"\[height, width, 3\], got \(4, 4, 4\)"),
        (np.zeros((0, 4, 3)), ValueError, r"\[height, width, 3\], got \(0, 4, 3\)"),
        (np.zeros((2, 2, 3), np.int32), TypeError, "uint8 or float, got int32"),
        (np.zeros((2, 2, 3), bool), TypeError, "uint8 or float, got bool"),
    ],
)
def test_encode_png_rejects_other_shapes_and_dtypes(image, error, message):
    with pytest.raises(error, match="encode_png: `image` must be " + message):
        png.encode_png(image)


def test_write_png_writes_the_encoded_bytes(tmp_path, rng):
    image = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    path = tmp_path / "panel.png"
    png.write_png(str(path), image)
    assert path.read_bytes() == png.encode_png(image)


# ----------------------------------------------------------------------------- reading


def test_read_png_reads_what_encode_png_wrote(tmp_path, rng):
    image = rng.integers(0, 256, (6, 11, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    path.write_bytes(png.encode_png(image))
    pixels = png.read_png(path)
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, image)
    assert png.read_size(path) == (6, 11)
    assert png.read_size(str(path)) == (6, 11)


@pytest.mark.parametrize("colour", [0, 2, 4, 6])
@pytest.mark.parametrize("filters", [(0,), (1,), (2,), (3,), (4,), (4, 3, 2, 1, 0)])
def test_read_png_undoes_every_filter_for_every_colour_type(tmp_path, rng, colour, filters):
    image = rng.integers(0, 256, (5, 7, CHANNELS[colour]), dtype=np.uint8)
    data = _encode(image, filters, colour)
    np.testing.assert_array_equal(_decode(data)[0], image)  # The reference agrees with itself.
    path = tmp_path / "f.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(png.read_png(path), image)


def test_read_png_paeth_ties_and_extreme_values(tmp_path):
    # Grey pixel (1, 1): left 80, up 110, up-left 100, a tie between left and up-left (left
    # wins); pixel (1, 3): left 110, up 80, up-left 100, a tie between up and up-left (up wins).
    ties = np.array([[100, 110, 100, 80], [80, 5, 110, 7]], np.uint8)[..., None]
    # Saturated and alternating samples exercise the modulo-256 wrap.
    extreme = np.array(
        [[[255, 0], [0, 255], [255, 255]], [[0, 0], [255, 0], [128, 127]]], np.uint8
    ).repeat(3, axis=0)
    for image, colour in [(ties, 0), (extreme, 4)]:
        for filters in [(3,), (4,), (4, 3)]:
            path = tmp_path / "x.png"
            path.write_bytes(_encode(image, filters, colour))
            np.testing.assert_array_equal(png.read_png(path), image)


def test_read_png_joins_idat_chunks_and_skips_other_chunks(tmp_path, rng):
    image = rng.integers(0, 256, (9, 4, 4), dtype=np.uint8)
    path = tmp_path / "parts.png"
    text = (b"tEXt", b"Comment\x00made by a test")
    path.write_bytes(_encode(image, (1, 4), 6, idat_parts=3, extra=[text]))
    np.testing.assert_array_equal(png.read_png(path), image)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"depth": 16}, "bit depth 16, colour type 0, interlace 0"),
        ({"colour": 3}, "bit depth 8, colour type 3, interlace 0"),
        ({"interlace": 1}, "bit depth 8, colour type 0, interlace 1"),
    ],
)
def test_read_png_names_the_file_and_what_is_unsupported(tmp_path, settings, message):
    image = np.zeros((2, 2, 1), np.uint8)
    arguments = {"colour": 0, **settings}
    path = tmp_path / "odd.png"
    path.write_bytes(_encode(image, (0,), **arguments))
    with pytest.raises(png.PngError, match=f"odd.png: unsupported PNG .{message}.; save it as"):
        png.read_png(path)


def test_read_png_broken_files(tmp_path, rng):
    image = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    good = _encode(image, (0,), 2)
    cases = {
        "text.png": (b"hello, not an image", "text.png: not a PNG file"),
        "cut.png": (good[: 33 + 8 + 2], r"cut.png: truncated PNG \(IDAT chunk\)"),
        "empty.png": (SIGNATURE + _chunk(b"IEND", b""), "empty.png: PNG without header"),
    }
    ihdr = good[: 8 + 25]
    corrupt = ihdr + _chunk(b"IDAT", b"not zlib data") + _chunk(b"IEND", b"")
    cases["corrupt.png"] = (corrupt, "corrupt.png: corrupt image data")
    short = ihdr + _chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + _chunk(b"IEND", b"")
    cases["short.png"] = (short, "short.png: image data holds 10 bytes, expected 52")
    raw = b"".join(b"\x05" + bytes(12) for _ in range(4))
    unknown = ihdr + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    cases["filter.png"] = (unknown, "filter.png: scanline 0 has unknown filter type 5")
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(png.PngError, match=message):
            png.read_png(path)
    with pytest.raises(png.PngError, match="text.png: not a PNG file"):
        png.read_size(tmp_path / "text.png")
    with pytest.raises(FileNotFoundError):
        png.read_png(tmp_path / "missing.png")
    assert issubclass(png.PngError, ValueError)
