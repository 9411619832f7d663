"""Odd but valid image files, and what Pillow makes of them (`Image.open(p).convert("RGB")`,
the way MaPLe's Dassl loader opens every image), for tests/decode_parity.rs.

Writes tests/fixtures/odd/NAME and tests/fixtures/odd/NAME.pillow.png (8-bit RGB, lossless).
Needs Pillow and numpy only. Run from anywhere:

    python tools/reference/make_odd_images.py
"""
import io
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image

root = pathlib.Path(__file__).resolve().parents[2]
out = root / "tests/fixtures/odd"
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(1515)


def lzw_uncompressed(indices, min_code_size=8):
    """GIF LZW data that never grows its table: a clear code every 254 literals."""
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    width = min_code_size + 1
    acc = nbits = 0
    data = bytearray()

    def put(code):
        nonlocal acc, nbits
        acc |= code << nbits
        nbits += width
        while nbits >= 8:
            data.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8

    for i, v in enumerate(indices):
        if i % 254 == 0:
            put(clear)
        put(int(v))
    put(end)
    if nbits:
        data.append(acc & 0xFF)
    blocks = bytearray([min_code_size])
    for i in range(0, len(data), 255):
        chunk = data[i : i + 255]
        blocks += bytes([len(chunk)]) + chunk
    return bytes(blocks + b"\x00")


def gif(screen, frame_box, indices, global_pal=None, local_pal=None, transparent=None, bg=0):
    """A one-frame GIF89a: logical screen `screen` (w, h), the frame at `frame_box` (x, y, w, h)."""
    sw, sh = screen
    x, y, w, h = frame_box
    b = bytearray(b"GIF89a")
    flags = 0
    if global_pal is not None:
        flags = 0x80 | 0x70 | 7  # global table of 256 entries, 8 bits per primary
    b += struct.pack("<HHBBB", sw, sh, flags, bg, 0)
    if global_pal is not None:
        b += bytes(np.asarray(global_pal, np.uint8).reshape(-1))
    if transparent is not None:
        b += b"\x21\xf9\x04" + bytes([1]) + struct.pack("<H", 0) + bytes([transparent, 0])
    lflags = 0
    if local_pal is not None:
        lflags = 0x80 | 7
    b += b"," + struct.pack("<HHHHB", x, y, w, h, lflags)
    if local_pal is not None:
        b += bytes(np.asarray(local_pal, np.uint8).reshape(-1))
    b += lzw_uncompressed(np.asarray(indices, np.uint8).reshape(-1))
    b += b";"
    return bytes(b)


def palette(seed):
    p = np.random.default_rng(seed).integers(0, 256, (256, 3), dtype=np.uint8)
    return p


def write(name, data):
    (out / name).write_bytes(data)
    rgb = Image.open(out / name).convert("RGB")
    rgb.save(out / f"{name}.pillow.png")
    print(f"{name}: {rgb.size[0]}x{rgb.size[1]}")


# GIFs whose first frame does not cover the logical screen.
pal = palette(1)
pal[0] = (200, 30, 40)
idx = rng.integers(1, 256, (20, 30))
write("gif_partial_frame.gif", gif((64, 48), (10, 8, 30, 20), idx, global_pal=pal, bg=3))
tpal = palette(2)
tpal[5] = (10, 220, 90)
tidx = rng.integers(0, 256, (20, 30))
tidx[::3, ::4] = 5
write(
    "gif_partial_transparent.gif",
    gif((64, 48), (10, 8, 30, 20), tidx, global_pal=tpal, transparent=5, bg=9),
)
lpal = palette(3)
lpal[0] = (250, 250, 0)
write(
    "gif_local_palette.gif",
    gif((50, 40), (5, 6, 30, 20), idx, global_pal=pal, local_pal=lpal),
)
# A frame reaching past the logical screen (Pillow grows the image).
write("gif_frame_past_screen.gif", gif((20, 16), (10, 8, 30, 20), idx, global_pal=pal))

# A JPEG followed by a video, as motion photos are (the trailer holds FF DA and FF D9 bytes).
photo = (root / "tests/fixtures/images/photo_320x240.jpg").read_bytes()
def no_ff(n):
    b = rng.integers(0, 255, n, dtype=np.uint8)  # 0..254: no marker by chance
    return bytes(b)


# After the image's end marker: an end marker, then a start-of-scan with no end marker after it
# (what made maple call such files truncated).
trailer = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + no_ff(3000)
trailer += b"\xff\xd9" + no_ff(200) + b"\xff\xda\x00\x08" + no_ff(500)
write("jpeg_motion_photo.jpg", photo + trailer)

# CMYK JPEG (Pillow writes Adobe's inverted convention and reads it back as such).
scene = Image.open(root / "tests/fixtures/images/rgb_100x80.png").convert("RGB")
cmyk = Image.fromarray(
    np.dstack(
        [np.asarray(scene), np.random.default_rng(4).integers(0, 120, (80, 100), dtype=np.uint8)]
    ),
    mode="CMYK",
)
buf = io.BytesIO()
cmyk.save(buf, "JPEG", quality=90)
write("cmyk_100x80.jpg", buf.getvalue())

# A PNG whose IEND chunk is missing (Pillow opens it: the image data is complete).
buf = io.BytesIO()
scene.save(buf, "PNG")
png = buf.getvalue()
assert png.endswith(b"IEND\xaeB`\x82")
write("png_no_iend.png", png[:-12])

# TIFFs Pillow opens: a palette image and a 32-bit float gray image (converted by clipping).
buf = io.BytesIO()
scene.quantize(64).save(buf, "TIFF")
write("palette_100x80.tiff", buf.getvalue())
f = np.linspace(-40.0, 300.0, 60 * 40, dtype=np.float32).reshape(40, 60)
f += np.random.default_rng(5).normal(0, 3, f.shape).astype(np.float32)
buf = io.BytesIO()
Image.fromarray(f, mode="F").save(buf, "TIFF")
write("float_60x40.tiff", buf.getvalue())

# JPEG-compressed RGB TIFFs (libtiff + libjpeg in Pillow): one strip, and 64-row strips with
# the last one short (300 = 4·64 + 44).
buf = io.BytesIO()
scene.save(buf, "TIFF", compression="jpeg")
write("jpeg_in_tiff_100x80.tiff", buf.getvalue())
buf = io.BytesIO()
Image.open(root / "tests/fixtures/images/rgb_451x300.png").convert("RGB").save(
    buf, "TIFF", compression="jpeg", tiffinfo={278: 64}
)
write("jpeg_in_tiff_strips_451x300.tiff", buf.getvalue())
