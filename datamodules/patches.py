"""Patch codecs: images to the model's inputs, continuous (Transfusion) or discrete (Chameleon).

  * ``patchify`` / ``unpatchify``: images ↔ row-major sequences of flattened patches;
  * ``PatchNormalizer``: continuous patches for Transfusion-style models;
  * ``PatchVQ``: a k-means codebook over patches, giving discrete codes for Chameleon-style models.

Shape legend: N images, H×W pixels, C channels (1 or 3), p the patch side, n = (H/p)·(W/p) patches per image,
d = p·p·C values per patch, K codebook entries. Images are float32 in [0, 1] with layout (N, H, W, C).
"""

from __future__ import annotations

import numpy as np

from datamodules.errors import DataMismatch


def patchify(images: np.ndarray, patch: int) -> np.ndarray:
    """(N, H, W, C) → (N, n, p·p·C), patches in row-major order over the grid, each flattened as (p, p, C)."""
    n_img, height, width, channels = images.shape
    if height % patch or width % patch:
        raise DataMismatch(
            f"image size {height}×{width} is not divisible by patch size {patch}: choose an image_patch that divides "
            "both sides"
        )
    gh, gw = height // patch, width // patch
    x = images.reshape(n_img, gh, patch, gw, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n_img, gh * gw, patch * patch * channels)


def unpatchify(patches: np.ndarray, patch: int, height: int, width: int, channels: int) -> np.ndarray:
    """(N, n, p·p·C) → (N, H, W, C): the exact inverse of ``patchify``."""
    if height % patch or width % patch:
        raise ValueError(f"image size {height}×{width} is not divisible by patch size {patch}")
    gh, gw = height // patch, width // patch
    n_img, n, d = patches.shape
    if n != gh * gw or d != patch * patch * channels:
        raise ValueError(f"patches {patches.shape} do not tile a {height}×{width}×{channels} image with p={patch}")
    x = patches.reshape(n_img, gh, gw, patch, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n_img, height, width, channels)


def _check_shape(images: np.ndarray, image_shape: tuple[int, int, int]) -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(f"expected images (N, {', '.join(map(str, image_shape))}), got {images.shape}")


class PatchNormalizer:
    """Continuous patches (Transfusion): each of the d patch dimensions standardised with training statistics.

    Args:
        patch: patch side p.
        image_shape: (H, W, C) of the images it encodes.
        mean: (d,) per-dimension mean of the training patches.
        std: (d,) per-dimension standard deviation, already floored.
    """

    def __init__(self, patch: int, image_shape: tuple[int, int, int], mean: np.ndarray, std: np.ndarray) -> None:
        self.patch = int(patch)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)

    @classmethod
    def fit(cls, images: np.ndarray, patch: int, min_std: float = 1e-2) -> PatchNormalizer:
        """Fits the statistics on training images (N, H, W, C).

        ``min_std`` keeps near-constant dimensions (e.g. the always-black border of Fashion-MNIST) from blowing
        up to huge values after division.
        """
        x = patchify(images, patch).reshape(-1, patch * patch * images.shape[-1]).astype(np.float64)
        return cls(patch, images.shape[1:], x.mean(axis=0), np.maximum(x.std(axis=0), min_std))

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) → (N, n, d) float32 normalised patches."""
        _check_shape(images, self.image_shape)
        return ((patchify(images, self.patch) - self.mean) / self.std).astype(np.float32)

    def decode(self, patches: np.ndarray) -> np.ndarray:
        """(N, n, d) → (N, H, W, C) float32; inverts ``encode`` up to float rounding (no clipping)."""
        x = np.asarray(patches, dtype=np.float64) * self.std + self.mean
        return unpatchify(x, self.patch, *self.image_shape).astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays, for ``np.savez`` caches."""
        return {
            "patch": np.array(self.patch),
            "image_shape": np.array(self.image_shape),
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> PatchNormalizer:
        """Rebuilds a normaliser from ``state_dict()``."""
        return cls(int(state["patch"]), tuple(state["image_shape"]), state["mean"], state["std"])


class PatchVQ:
    """Discrete patches (Chameleon): a k-means codebook over p×p patches, one code per patch.

    One instance serves one image source. Grayscale and RGB patches have different sizes (p·p vs p·p·3), and a
    shared codebook would spend entries on one source's patches that the other never uses; separate codebooks stay
    simple and each source gets its own token range (the caller offsets codes when it builds a joint vocabulary).

    Args:
        patch: patch side p.
        image_shape: (H, W, C) of the images it encodes.
        codebook: (K, d) float32 centroids.
    """

    def __init__(self, patch: int, image_shape: tuple[int, int, int], codebook: np.ndarray) -> None:
        self.patch = int(patch)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.codebook = np.asarray(codebook, dtype=np.float32)
        self._codebook_sq = (self.codebook.astype(np.float64) ** 2).sum(axis=1)

    @property
    def codebook_size(self) -> int:
        return len(self.codebook)

    @classmethod
    def fit(
        cls,
        images: np.ndarray,
        patch: int = 4,
        codebook_size: int = 256,
        seed: int = 0,
        max_fit_patches: int = 500_000,
        n_init: int = 1,
    ) -> PatchVQ:
        """Fits a codebook of K = `codebook_size` entries with MiniBatchKMeans on training images (N, H, W, C).

        Deterministic: `seed` seeds both the patch sample and k-means, so two fits give the same codebook.

        Args:
            max_fit_patches: fit on at most this many patches, a seeded random sample.
            n_init: k-means restarts (the best inertia wins).
        """
        from sklearn.cluster import MiniBatchKMeans

        x = patchify(images, patch).reshape(-1, patch * patch * images.shape[-1])
        if len(x) < codebook_size:  # k-means needs a patch per centroid
            raise DataMismatch(
                f"a codebook of {codebook_size} entries needs at least {codebook_size} training patches; the "
                f"{len(images)} training images of {'x'.join(map(str, images.shape[1:]))} give {len(x)} "
                f"({len(x) // max(len(images), 1)} each at patch {patch}): add images or lower image_codebook to at "
                f"most {len(x)}"
            )
        if len(x) > max_fit_patches:
            x = x[np.sort(np.random.default_rng(seed).choice(len(x), size=max_fit_patches, replace=False))]
        kmeans = MiniBatchKMeans(n_clusters=codebook_size, batch_size=4096, n_init=n_init, random_state=seed)
        kmeans.fit(x.astype(np.float32))
        return cls(patch, images.shape[1:], kmeans.cluster_centers_)

    def encode(self, images: np.ndarray, chunk: int = 16384) -> np.ndarray:
        """(N, H, W, C) → (N, n) int64 codes of the nearest centroids."""
        _check_shape(images, self.image_shape)
        x = patchify(images, self.patch)
        flat = x.reshape(-1, x.shape[-1]).astype(np.float32)
        codes = np.empty(len(flat), dtype=np.int64)
        for start in range(0, len(flat), chunk):
            block = flat[start : start + chunk]
            # ||x - c||² = ||x||² - 2 x·c + ||c||²; ||x||² is the same for every c, so it does not change the argmin.
            dist = self._codebook_sq - 2.0 * (block @ self.codebook.T)
            codes[start : start + chunk] = dist.argmin(axis=1)
        return codes.reshape(x.shape[:2])

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(N, n) codes → (N, H, W, C) float32 images of the centroids, clipped to [0, 1]."""
        patches = self.codebook[np.asarray(codes)]
        return np.clip(unpatchify(patches, self.patch, *self.image_shape), 0.0, 1.0)

    def reconstruction_mse(self, images: np.ndarray) -> float:
        """Mean squared pixel error of ``decode(encode(images))``."""
        return float(np.mean((self.decode(self.encode(images)) - images) ** 2))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays, for ``np.savez`` caches."""
        return {"patch": np.array(self.patch), "image_shape": np.array(self.image_shape), "codebook": self.codebook}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> PatchVQ:
        """Rebuilds a quantiser from ``state_dict()``."""
        return cls(int(state["patch"]), tuple(state["image_shape"]), state["codebook"])
