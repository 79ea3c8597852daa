"""Image sources and patch codecs: real offline data loads, exact patch round trips, a VQ codebook of known quality."""

import gzip
import socket
import struct
from pathlib import Path

import numpy as np
import pytest

from datamodules.images import (
    EMOJI_FONT,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    FASHION_MNIST_TEMPLATES,
    SourceUnavailable,
    load_digits_images,
    load_emoji,
    load_fashion_mnist,
    read_idx,
)
from datamodules.patches import PatchNormalizer, PatchVQ, patchify, unpatchify


def _no_network(*args, **kwargs):
    raise OSError("network access attempted during a data load")


@pytest.fixture(scope="module")
def offline():
    """Makes any socket connection fail, so a load that reaches for the network fails its test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        yield


@pytest.fixture(scope="module")
def fashion(offline):
    try:
        return load_fashion_mnist()
    except SourceUnavailable as e:
        pytest.skip(f"{e} (install with `bash setup.sh`)")


@pytest.fixture(scope="module")
def emoji_set(offline):
    if not Path(EMOJI_FONT).is_file():
        pytest.skip(f"{EMOJI_FONT} absent: run `bash setup.sh` (Debian fonts-noto-color-emoji)")
    return load_emoji(size=32)


def _write_idx(path: Path, payload: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(payload)


def test_fashion_mnist_loads(fashion):
    """60k train + 10k val images of 28×28×1 in [0, 1], with varied class captions."""
    assert fashion.images.shape == (70_000, 28, 28, 1) and fashion.images.dtype == np.float32
    assert (fashion.split == "train").sum() == 60_000 and (fashion.split == "val").sum() == 10_000
    assert fashion.images.min() == 0.0 and fashion.images.max() == 1.0
    assert 0.1 < fashion.images.var() < 0.15  # docs/data.md: pixel variance 0.124
    assert len(fashion.captions) == 70_000
    templates_seen = {
        t
        for c in fashion.captions[:1000]
        for t in FASHION_MNIST_TEMPLATES
        for name in FASHION_MNIST_CLASSES
        if c == t.format(c=name)
    }
    assert len(templates_seen) >= 6
    assert any("t-shirt" in c for c in fashion.captions) and any("ankle boot" in c for c in fashion.captions)


def test_fashion_mnist_deterministic_subset(fashion, offline):
    """Two loads with limit_train agree, keep the full val split and give each image the caption of the full load."""
    a = load_fashion_mnist(limit_train=1000)
    b = load_fashion_mnist(limit_train=1000)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert (a.split == "train").sum() == 1000 and (a.split == "val").sum() == 10_000
    full_val, sub_val = fashion.select("val"), a.select("val")
    assert np.array_equal(full_val.images, sub_val.images) and full_val.captions == sub_val.captions
    # Every subsampled train image appears in the full train set with the same caption.
    full_train = fashion.select("train")
    index = {full_train.images[i].tobytes(): full_train.captions[i] for i in range(len(full_train.captions))}
    sub_train = a.select("train")
    assert all(index[img.tobytes()] == cap for img, cap in zip(sub_train.images, sub_train.captions, strict=True))


def test_corrupt_idx_raises(tmp_path):
    """Non-gzip data, a bad magic number and a size that disagrees with the header each give a clear ValueError."""
    bad = tmp_path / "not_gzip.gz"
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match="gzip"):
        read_idx(bad)
    magic = tmp_path / "magic.gz"
    _write_idx(magic, b"\x00\x00\x0d\x01" + struct.pack(">I", 2) + b"\x00\x00")
    with pytest.raises(ValueError, match="magic"):
        read_idx(magic)
    short = tmp_path / "short.gz"
    _write_idx(short, b"\x00\x00\x08\x03" + struct.pack(">III", 10, 28, 28) + bytes(100))
    with pytest.raises(ValueError, match="shape"):
        read_idx(short)
    good = tmp_path / "good.gz"
    _write_idx(good, b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + bytes(range(6)))
    assert read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_fashion_mnist_missing_names_setup(tmp_path):
    """A folder without the files raises SourceUnavailable naming setup.sh."""
    with pytest.raises(SourceUnavailable, match="setup.sh"):
        load_fashion_mnist(tmp_path)


def test_fashion_mnist_corrupt_file_raises(tmp_path):
    """A corrupt file among the four Fashion-MNIST files raises ValueError naming it."""
    root = Path(FASHION_MNIST_ROOT)
    if not root.is_dir():
        pytest.skip(f"{root} absent: run `bash setup.sh`")
    for f in root.glob("*-ubyte.gz"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="t10k-labels"):
        load_fashion_mnist(tmp_path)


def test_emoji_loads(emoji_set):
    """About 1,900 non-blank 32×32 RGB emoji with real names; train and val are disjoint by name."""
    n = len(emoji_set.captions)
    assert 1_800 <= n <= 1_923
    assert emoji_set.images.shape == (n, 32, 32, 3) and emoji_set.images.dtype == np.float32
    assert emoji_set.images.min() >= 0.0 and emoji_set.images.max() <= 1.0
    assert (emoji_set.images.reshape(n, -1).min(axis=1) < 1.0).all()  # no blank (all-white) image
    assert sum("face" in c for c in emoji_set.captions) > 50
    assert all(":" not in c and "_" not in c for c in emoji_set.captions)
    train = set(np.array(emoji_set.captions)[emoji_set.split == "train"])
    val = set(np.array(emoji_set.captions)[emoji_set.split == "val"])
    assert not train & val
    assert 0.05 < len(val) / n < 0.15


def test_digits_fallback(offline):
    """sklearn digits: 1,797 images of 8×8×1 in [0, 1] captioned with the digit word."""
    digits = load_digits_images()
    assert digits.images.shape == (1797, 8, 8, 1) and digits.images.max() == 1.0
    assert any("seven" in c for c in digits.captions)
    assert 150 < (digits.split == "val").sum() < 200


def test_patchify_round_trip():
    """unpatchify inverts patchify exactly, patches run row-major, and a non-dividing patch size is refused."""
    x = np.random.default_rng(0).random((3, 8, 12, 3), dtype=np.float32)
    p = patchify(x, 4)
    assert p.shape == (3, 6, 48)
    assert np.array_equal(p[1, 1], x[1, 0:4, 4:8, :].reshape(-1))  # second patch of the first row
    assert np.array_equal(p[1, 3], x[1, 4:8, 0:4, :].reshape(-1))  # first patch of the second row
    assert np.array_equal(unpatchify(p, 4, 8, 12, 3), x)
    with pytest.raises(ValueError, match="divisible"):
        patchify(x, 5)


def test_patch_normalizer_round_trip():
    """PatchNormalizer standardises the training patches and decode inverts encode to within 1e-5."""
    rng = np.random.default_rng(0)
    x = rng.random((50, 28, 28, 1), dtype=np.float32)
    x[:, :2] = 0.0  # constant dimensions exercise the std floor
    norm = PatchNormalizer.fit(x, patch=4)
    z = norm.encode(x)
    assert z.shape == (50, 49, 16) and z.dtype == np.float32 and np.isfinite(z).all()
    assert np.abs(z.reshape(-1, 16).mean(axis=0)).max() < 1e-4
    assert np.abs(norm.decode(z) - x).max() < 1e-5
    again = PatchNormalizer.from_state(norm.state_dict())
    assert np.array_equal(again.encode(x), z)
    with pytest.raises(ValueError):
        norm.encode(x[:, :24, :24])


def test_vq_fashion_mnist(fashion):
    """K=256 4×4 VQ fit on 5k images: held-out MSE near the 0.0084 measured with 20k images, codes in range,
    fit deterministic."""
    train, val = fashion.select("train"), fashion.select("val")
    vq = PatchVQ.fit(train.images[:5000], patch=4, codebook_size=256, seed=0)
    assert vq.codebook.shape == (256, 16)
    held_out = val.images[:2000]
    codes = vq.encode(held_out)
    assert codes.shape == (2000, 49) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 256
    assert vq.decode(codes).shape == held_out.shape
    # 0.0084 was measured with 20k training images; a quarter of the data may cost a little, so allow ~1.8×,
    # which is still about 8× below the pixel variance (0.124): the codes carry most of the image.
    mse = vq.reconstruction_mse(held_out)
    assert mse < 0.015 and mse < held_out.var() / 8
    again = PatchVQ.fit(train.images[:5000], patch=4, codebook_size=256, seed=0)
    assert np.array_equal(vq.codebook, again.codebook)
    restored = PatchVQ.from_state(vq.state_dict())
    assert np.array_equal(restored.encode(held_out), codes)


def test_vq_encode_is_nearest_centroid():
    """The chunked matrix-form encoder picks the same centroid as a brute-force search."""
    rng = np.random.default_rng(1)
    x = rng.random((20, 8, 8, 3), dtype=np.float32)
    vq = PatchVQ(patch=2, image_shape=(8, 8, 3), codebook=rng.random((32, 12), dtype=np.float32))
    patches = patchify(x, 2).reshape(-1, 12)
    brute = ((patches[:, None, :] - vq.codebook[None]) ** 2).sum(-1).argmin(axis=1)
    assert np.array_equal(vq.encode(x, chunk=7).reshape(-1), brute)
