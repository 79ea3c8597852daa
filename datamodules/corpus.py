"""The prepared corpus in memory (`Corpus`: ragged token rows, encoded image sources, speech splits), read back
from its cache folder (`load_corpus`), and its dataset card as text (`format_card`). datamodules/prepare.py writes the
folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.patches import PatchNormalizer, PatchVQ
from datamodules.text import load_tokenizer


class Ragged:
    """Variable-length int rows stored as one flat array plus offsets."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray) -> None:
        self.values, self.offsets = values, offsets

    @classmethod
    def from_rows(cls, rows: list[np.ndarray], dtype=np.int64) -> Ragged:
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        values = np.concatenate(rows).astype(dtype) if rows else np.zeros(0, dtype)
        return cls(values, np.concatenate([[0], np.cumsum(lengths)]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def total(self) -> int:
        return int(self.offsets[-1])


def save_ragged(path: Path, arrays: dict[str, Ragged]) -> None:
    """Named ragged arrays into one .npz, each as `<name>_values` and `<name>_offsets`."""
    np.savez(path, **{f"{n}_{part}": getattr(r, part) for n, r in arrays.items() for part in ("values", "offsets")})


def load_ragged(path: Path) -> dict[str, Ragged]:
    """The arrays `save_ragged` wrote, by name."""
    with np.load(path) as z:
        names = [n[: -len("_values")] for n in z.files if n.endswith("_values")]
        return {n: Ragged(z[f"{n}_values"], z[f"{n}_offsets"]) for n in names}


@dataclass
class ImageSource:
    """One image source, encoded: uint8 images, caption ids, VQ codes, and its fitted VQ and normaliser."""

    name: str
    images: np.ndarray  # (N, H, W, C) uint8
    is_val: np.ndarray  # (N,) bool
    captions: Ragged
    codes: np.ndarray  # (N, n_patches) int64, in [0, image_codebook)
    vq: PatchVQ
    normalizer: PatchNormalizer  # over RGB patches, so every source has the same continuous patch width


@dataclass
class SpeechSplit:
    transcripts: Ragged
    units: Ragged
    source: str


@dataclass
class Corpus:
    """The prepared corpus every setting is assembled from."""

    tokenizer: object
    text_train: Ragged
    text_val: Ragged
    images: list[ImageSource]
    speech_train: SpeechSplit | None
    speech_val: SpeechSplit | None
    speech_real_val: SpeechSplit | None  # real human speech (Asterisk prompts), a separate validation set
    card: dict


def load_corpus(folder: str | Path) -> Corpus:
    """Read a prepared corpus back (the folder was verified by prepare_corpus)."""
    folder = Path(folder)
    card = json.loads((folder / "card.json").read_text())
    ragged = load_ragged(folder / "ragged.npz")
    images = []
    for k in range(len(card["images"])):
        with np.load(folder / f"image{k}.npz") as z:
            state = {n: z[n] for n in z.files}
        images.append(
            ImageSource(
                str(state["name"]),
                state["images"],
                state["is_val"],
                ragged[f"captions{k}"],
                state["codes"].astype(np.int64),
                PatchVQ.from_state(_prefixed(state, "vq_")),
                PatchNormalizer.from_state(_prefixed(state, "norm_")),
            )
        )

    def speech(name: str) -> SpeechSplit | None:
        if f"{name}_units" not in ragged:
            return None
        return SpeechSplit(ragged[f"{name}_transcripts"], ragged[f"{name}_units"], name)

    return Corpus(
        load_tokenizer(folder / "tokenizer.json"),
        ragged["text_train"],
        ragged["text_val"],
        images,
        speech("speech_train"),
        speech("speech_val"),
        speech("speech_real_val"),
        card,
    )


def _prefixed(state: dict, prefix: str) -> dict:
    """The entries of `state` whose names start with `prefix`, with the prefix removed."""
    return {n[len(prefix) :]: v for n, v in state.items() if n.startswith(prefix)}


def format_card(card: dict) -> str:
    """The dataset card as readable text."""
    lines = ["Dataset card", "  sources:"] + [f"    - {s}" for s in card["sources"]]
    lines += [f"  warning: {w}" for w in card["warnings"]]
    t = card["text"]
    lines.append(
        f"  text: {t['train_documents']} train / {t['val_documents']} val documents, {t['train_tokens']:,} / "
        f"{t['val_tokens']:,} BPE tokens ({t['train_chars_per_token']:.2f} chars/token)"
    )
    for im in card["images"]:
        lines.append(
            f"  images {im['source']}: {im['train_images']} train / {im['val_images']} val, "
            f"{im['tokens_per_image']} codes each (K={im['vq_codebook']}), VQ val MSE "
            f"{im['vq_val_mse']:.4f} (pixel variance {im['pixel_variance']:.3f})"
        )
    for name, s in card.get("speech", {}).items():
        if isinstance(s, dict):
            lines.append(
                f"  {name}: {s['utterances']} utterances, {s['minutes']:.1f} min, {s['units']:,} units "
                f"({s['units_per_second']:.1f} units/s)"
            )
    b = card["build_time_s"]
    lines.append("  build time: " + ", ".join(f"{k} {v:.1f}s" for k, v in b.items()))
    return "\n".join(lines)
