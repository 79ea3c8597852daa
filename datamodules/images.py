"""Captioned image sources, all offline (docs/data.md); the codecs that turn images into inputs are in patches.py.

  * Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (70k 28×28 grayscale, templated captions);
  * Noto Color Emoji rendered with Pillow, named by the ``emoji`` package (~1,900 32×32 RGB, real names);
  * sklearn's ``load_digits`` (1,797 8×8 grayscale), a pip-only fallback for the fastest smoke tests.

Images are float32 in [0, 1] with layout (N, H, W, C): N images, H×W pixels, C channels (1 or 3).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.hashing import stable_fraction
from datamodules.errors import SourceUnavailable

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"

FASHION_MNIST_CLASSES = tuple("t-shirt,trouser,pullover,dress,coat,sandal,shirt,sneaker,bag,ankle boot".split(","))
# Several phrasings per class, so a model cannot learn the caption as one fixed string per class.
FASHION_MNIST_TEMPLATES = (
    "a photo of a {c}",
    "a {c}",
    "a black and white picture of a {c}",
    "{c}",
    "an image showing a {c}",
    "a small grayscale photo of a {c}",
    "this is a {c}",
    "a product photo of a {c}",
)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = ("{c}", "the digit {c}", "a handwritten {c}", "the number {c}")

# Pillow renders this CBDT bitmap font only at its native strike size.
_EMOJI_NATIVE_SIZE = 109
EMOJI_VAL_FRACTION = 0.1
_SKIN_TONES = frozenset(chr(cp) for cp in range(0x1F3FB, 0x1F400))


@dataclass
class ImageSet:
    """Captioned images from one source.

    Attributes:
        images: (N, H, W, C) float32 in [0, 1].
        captions: one caption per image.
        split: (N,) array of "train" or "val".
        source: name of the source, e.g. "fashion_mnist".
    """

    images: np.ndarray
    captions: list[str]
    split: np.ndarray
    source: str

    def select(self, split: str) -> ImageSet:
        """Returns the images of one split ("train" or "val")."""
        keep = np.flatnonzero(self.split == split)
        return ImageSet(self.images[keep], [self.captions[i] for i in keep], self.split[keep], self.source)


# -- Sources -----------------------------------------------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """Reads a gzipped IDX file of unsigned bytes (the MNIST format).

    Layout: two zero bytes, a type byte (0x08 = uint8), the number of dimensions, one big-endian uint32 size per
    dimension, then the data.

    Raises:
        ValueError: the file is not gzip, has a bad header, or its size disagrees with the header.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a truncated stream raises EOFError
        raise ValueError(f"{path}: not a readable gzip IDX file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: bad IDX magic {raw[:4].hex()!r} (expected 0000 08 followed by the rank)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header (rank {ndim})")
    dims = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(dims)):
        raise ValueError(f"{path}: header says shape {dims} but holds {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _template_captions(labels: np.ndarray, names: tuple[str, ...], templates: tuple[str, ...], seed: int) -> list[str]:
    """Captions from class names, each image drawing a template from a seeded generator (deterministic)."""
    picks = np.random.default_rng(seed).integers(len(templates), size=len(labels))
    return [templates[t].format(c=names[y]) for t, y in zip(picks, labels, strict=True)]


def load_fashion_mnist(root: str | Path = FASHION_MNIST_ROOT, limit_train: int | None = None) -> ImageSet:
    """Loads Fashion-MNIST from ``root/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``: 60k train and 10k val
    images of 28×28×1 (its own test set serves as the val split), with templated captions. `limit_train` keeps that
    many train images, a fixed random subset (val is always complete). SourceUnavailable if the files are absent,
    ValueError if one is corrupt."""
    root = Path(root)
    files = {
        (part, kind): root / f"{part}-{kind}-ubyte.gz"
        for part in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SourceUnavailable(
            f"Fashion-MNIST files missing ({', '.join(missing)}): run `bash setup.sh` "
            "or `apt-get install dataset-fashion-mnist`"
        )

    images, captions, split = [], [], []
    for seed, (part, name) in enumerate((("train", "train"), ("t10k", "val"))):
        x = read_idx(files[part, "images-idx3"])
        y = read_idx(files[part, "labels-idx1"])
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{root}/{part}: images {x.shape} and labels {y.shape} do not match")
        if y.max() >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"{root}/{part}: label {y.max()} out of range")
        # Captions are drawn before subsampling, so an image keeps its caption whatever limit_train is.
        caps = _template_captions(y, FASHION_MNIST_CLASSES, FASHION_MNIST_TEMPLATES, seed=seed)
        if name == "train" and limit_train is not None and limit_train < len(x):
            keep = np.sort(np.random.default_rng(0).choice(len(x), size=limit_train, replace=False))
            x, caps = x[keep], [caps[i] for i in keep]
        images.append(x)
        captions += caps
        split += [name] * len(x)
    pixels = np.concatenate(images)[..., None].astype(np.float32) / 255.0
    return ImageSet(pixels, captions, np.array(split), "fashion_mnist")


def _render_emoji(font, text: str, size: int) -> np.ndarray | None:
    """Renders one emoji as (size, size, 3) float32 on white, or None when the font draws nothing for it."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((-left, -top), text, font=font, embedded_color=True)
    box = canvas.getbbox()  # bounding box of the non-transparent pixels
    if box is None:
        return None
    glyph = canvas.crop(box)
    # Centre on a transparent square so wide glyphs (flags, or a ZWJ sequence drawn as its parts) keep their aspect.
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    # Composite before resizing so the transparent border blends with white, not with black.
    white = Image.new("RGBA", square.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, square).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(rgb, dtype=np.float32) / 255.0
    return None if pixels.min() >= 1.0 else pixels


def load_emoji(size: int = 32, skin_tones: bool = False, font_path: str | Path = EMOJI_FONT) -> ImageSet:
    """Renders the fully-qualified emoji with Noto Color Emoji (the CBDT font at `font_path`), captioned with their
    CLDR names; `skin_tones` also includes the skin-tone variants (their names say the tone).

    Images are (size, size, 3) RGB on white. Emoji the font cannot draw (newer than its Emoji 15 data) come out blank
    and are dropped. About 10% go to val, chosen by a stable hash of the rendered picture. SourceUnavailable if the
    font or the ``emoji`` package is absent.
    """
    try:
        import emoji
    except ImportError as e:
        raise SourceUnavailable("the `emoji` package is missing: run `bash setup.sh` or `pip install emoji`") from e
    from PIL import ImageFont

    if not Path(font_path).is_file():
        raise SourceUnavailable(
            f"emoji font {font_path} missing: run `bash setup.sh` or `apt-get install fonts-noto-color-emoji`"
        )
    font = ImageFont.truetype(str(font_path), _EMOJI_NATIVE_SIZE)

    images, captions, split = [], [], []
    for char, info in emoji.EMOJI_DATA.items():
        if info["status"] != emoji.STATUS["fully_qualified"]:
            continue
        if not skin_tones and _SKIN_TONES.intersection(char):
            continue
        pixels = _render_emoji(font, char, size)
        if pixels is None:
            continue
        name = info["en"].strip(":").replace("_", " ")
        images.append(pixels)
        captions.append(name)
        # Split by the picture, not the name: some emoji share one glyph (a territory drawn with its country's flag),
        # and both captions must land on the same side of the split.
        split.append("val" if stable_fraction(pixels.tobytes()) < EMOJI_VAL_FRACTION else "train")
    return ImageSet(np.stack(images), captions, np.array(split), "emoji")


def load_digits_images() -> ImageSet:
    """Loads sklearn's 1,797 handwritten digits (8×8×1), captioned with the digit word; every 10th image is val."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images / 16.0).astype(np.float32)[..., None]  # values 0..16 in the source
    captions = _template_captions(digits.target, DIGIT_WORDS, DIGIT_TEMPLATES, seed=0)
    split = np.where(np.arange(len(pixels)) % 10 == 0, "val", "train")
    return ImageSet(pixels, captions, split, "digits")
