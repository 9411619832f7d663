"""A toy labelled image set for a real maple-train run: 10 classes told apart by colour and
shape (each image a random arrangement of its class's shapes on noise), K train and M held-out
images per class. Deterministic for a seed.

    python tools/train/make_toy_set.py OUT_DIR [--train 16] [--eval 8] [--seed 0]

Writes OUT_DIR/train/<class>/NNN.png and OUT_DIR/eval/<class>/NNN.png."""
import argparse
import pathlib
import random

from PIL import Image, ImageDraw

CLASSES = [("red circle", (220, 40, 40), "ellipse"), ("green square", (40, 180, 60), "rect"),
           ("blue triangle", (40, 70, 220), "tri"), ("yellow circle", (230, 210, 40), "ellipse"),
           ("purple square", (150, 50, 180), "rect"), ("orange triangle", (240, 140, 30), "tri"),
           ("cyan circle", (40, 200, 210), "ellipse"), ("white square", (235, 235, 235), "rect"),
           ("black triangle", (20, 20, 20), "tri"), ("pink circle", (240, 120, 180), "ellipse")]


def image(rng, colour, shape, w=160, h=120):
    img = Image.new("RGB", (w, h), tuple(rng.randrange(90, 166) for _ in range(3)))
    px = img.load()
    for _ in range(w * h // 6):  # speckle noise
        x, y = rng.randrange(w), rng.randrange(h)
        px[x, y] = tuple(min(255, max(0, c + rng.randrange(-60, 61))) for c in px[x, y])
    d = ImageDraw.Draw(img)
    for _ in range(rng.randrange(1, 4)):
        s = rng.randrange(24, 60)
        x, y = rng.randrange(0, w - s), rng.randrange(0, h - s)
        c = tuple(min(255, max(0, v + rng.randrange(-25, 26))) for v in colour)
        if shape == "ellipse":
            d.ellipse([x, y, x + s, y + s], fill=c)
        elif shape == "rect":
            d.rectangle([x, y, x + s, y + s], fill=c)
        else:
            d.polygon([(x + s / 2, y), (x, y + s), (x + s, y + s)], fill=c)
    return img


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=16)
    ap.add_argument("--eval", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    for split, n in (("train", a.train), ("eval", a.eval)):
        for name, colour, shape in CLASSES:
            d = pathlib.Path(a.out) / split / name.replace(" ", "_")
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image(rng, colour, shape).save(d / f"{i:03d}.png")
    print("wrote", a.out)


main()
