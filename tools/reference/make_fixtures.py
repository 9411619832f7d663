"""Fixture images (deterministic) and their reference crops.

Each image is opened the way MaPLe's evaluation (Dassl) opens it — PIL `Image.open(p).convert("RGB")`
— then torchvision `Resize(S, BICUBIC)` + `CenterCrop(S)`; the crop is saved as PNG for S = 224
(full-size model) and S = 32 (tiny model). Run from the repository root:

    python tools/reference/make_fixtures.py
"""
import pathlib
import numpy as np
from PIL import Image
import torchvision.transforms as T

root = pathlib.Path(__file__).resolve().parents[2]
img_dir = root / "tests/fixtures/images"
crop_dir = root / "tests/fixtures/crops"
img_dir.mkdir(parents=True, exist_ok=True)
crop_dir.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(20231)


def scene(w, h, seed):
    """A smooth picture with shapes and a little noise (resizing-sensitive, compresses well)."""
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        a, b, p = r.uniform(-1, 1, 3)
        img[..., c] = 127 + 90 * np.sin(a * x / 23 + b * y / 17 + p * 6)
    for _ in range(6):
        cx, cy, rad = r.uniform(0, w), r.uniform(0, h), r.uniform(5, max(8, min(w, h) / 3))
        col = r.uniform(0, 255, 3)
        m = (x - cx) ** 2 + (y - cy) ** 2 < rad ** 2
        img[m] = col
    img += r.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


made = {}
def save(name, im, **kw):
    im.save(img_dir / name, **kw)
    made[name] = im

save("rgb_451x300.png", Image.fromarray(scene(451, 300, 1)))            # downscale, landscape
save("rgb_100x80.png", Image.fromarray(scene(100, 80, 2)))              # upscale
save("gray_300x451.png", Image.fromarray(scene(300, 451, 3)[..., 0]))   # L, portrait
rgba = np.dstack([scene(256, 256, 4), np.tile(np.linspace(0, 255, 256).astype(np.uint8), (256, 1))])
save("rgba_256x256.png", Image.fromarray(rgba))                 # alpha dropped, not composited
save("odd_641x97.png", Image.fromarray(scene(641, 97, 5)))              # elongated, odd crop margin
save("exact_224x224.png", Image.fromarray(scene(224, 224, 6)))          # no resize at 224
g16 = (scene(120, 90, 7)[..., 0].astype(np.uint16) * 300).astype(np.uint16)
save("gray16_120x90.png", Image.fromarray(g16))                 # 16-bit gray
la = np.dstack([scene(64, 64, 8)[..., 0], np.full((64, 64), 128, np.uint8)])
save("la_64x64.png", Image.merge("LA", [Image.fromarray(la[..., 0]), Image.fromarray(la[..., 1])]))                         # gray + alpha
save("palette_200x150.png", Image.fromarray(scene(200, 150, 9)).quantize(64))  # P mode
save("photo_320x240.jpg", Image.fromarray(scene(320, 240, 10)), quality=90)
save("photo_gray_97x131.jpg", Image.fromarray(scene(97, 131, 11)[..., 1]), quality=85)
save("rgb_150x100.bmp", Image.fromarray(scene(150, 100, 12)))
save("rgb_130x170.gif", Image.fromarray(scene(130, 170, 13)).quantize(128))
save("rgb_180x120.webp", Image.fromarray(scene(180, 120, 14)), lossless=True)
save("rgb_90x140.tiff", Image.fromarray(scene(90, 140, 15)))

# Pillow cannot write 16-bit RGB PNGs; pypng can (Pillow reads them back as 8-bit RGB).
try:
    import png  # pypng
    a = scene(77, 99, 16).astype(np.uint16) * 257 + rng.integers(0, 256, (99, 77, 3)).astype(np.uint16)
    with open(img_dir / "rgb16_77x99.png", "wb") as f:
        png.Writer(77, 99, bitdepth=16, greyscale=False).write(f, a.reshape(99, -1).tolist())
except ImportError:
    print("pypng not installed: skipping rgb16_77x99.png")

for p in sorted(img_dir.iterdir()):
    rgb = Image.open(p).convert("RGB")
    for s in (224, 32):
        crop = T.CenterCrop(s)(T.Resize(s, interpolation=T.InterpolationMode.BICUBIC)(rgb))
        crop.save(crop_dir / f"{p.stem}.{p.suffix[1:]}_{s}.png")
    print(p.name, Image.open(p).mode, Image.open(p).size)

# One crop as raw RGB bytes, so the no_std core tests can run the model without an image decoder.
rgb = Image.open(img_dir / "rgb_451x300.png").convert("RGB")
crop = T.CenterCrop(32)(T.Resize(32, interpolation=T.InterpolationMode.BICUBIC)(rgb))
(crop_dir / "rgb_451x300.png_32.rgb").write_bytes(crop.tobytes())
