"""A researcher's own corpus, read through the same preparation path as the default sources.

On-disk format: a folder holding `documents.jsonl`, one JSON object per line, paths relative to the folder:

    {"text": "A passage of text."}                                             text-only document
    {"text": "a caption", "image": "images/0001.npy"}                          caption + image
    {"text": "a transcript", "audio": "audio/0001.npy", "sample_rate": 16000}  transcript + speech

Images are `.npy` arrays (H, W) or (H, W, C), uint8 or float in [0, 1]; images of one shape form one source with
its own VQ codebook (so the patch size must divide H and W). Audio is a mono float `.npy` waveform in [-1, 1] with
its sample rate. An optional `"split": "train" | "val"` fixes a document's split; otherwise a stable hash of its
text and its image or audio bytes puts about 10% in validation. Every modality present gets validation and
training documents: if the hash drew none on one side (a small set), the unmarked document of smallest (largest)
hash moves there; a modality where that is impossible (a single document) fails, saying how to mark one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import stable_fraction
from datamodules.errors import CorruptSource, SourceUnavailable
from datamodules.images import ImageSet
from datamodules.speech import Utterance
from datamodules.text import TextCorpus

VAL_FRACTION = 0.1  # of the documents without a "split" field


@dataclass
class OwnData:
    text: TextCorpus
    images: list[ImageSet]
    speech_train: list[Utterance]
    speech_val: list[Utterance]
    sources: list[str]


def _split(record: dict, media: bytes) -> bool | float:
    """True / False for a document marked val / train; else its hash in [0, 1) (val below VAL_FRACTION). The hash
    covers the media too: repeated captions ("a photo") must not send all their images to one side."""
    split = record.get("split")
    if split is not None:
        if split not in ("train", "val"):
            raise CorruptSource(f"split must be 'train' or 'val', got {split!r}")
        return split == "val"
    return stable_fraction(record["text"].encode("utf-8") + media)


def _assign(draws: list[bool | float], what: str, index: Path) -> list[bool]:
    """Each document's split (True = val), with a validation and a training document where the draws left one side
    empty (see the module docstring); documents marked by their "split" field are never moved."""
    val = [d if isinstance(d, bool) else d < VAL_FRACTION for d in draws]
    unmarked = [i for i, d in enumerate(draws) if not isinstance(d, bool)]
    for side in (True, False):  # the side that needs a document: validation, then training
        if draws and side not in val:
            movable = [i for i in unmarked if sum(v != side for v in val) > 1]
            if not movable:
                raise SourceUnavailable(
                    f"own data: {index} has no {'validation' if side else 'training'} document for {what} "
                    f'({len(draws)} documents); mark one with "split": "{"val" if side else "train"}" (each '
                    "modality needs both)"
                )
            val[(min if side else max)(movable, key=lambda i: draws[i])] = side
    return val


def _image(path: Path) -> np.ndarray:
    array = np.load(path)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise CorruptSource(f"{path}: an image must be (H, W) or (H, W, C), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255
    array = array.astype(np.float32)
    if array.min() < 0 or array.max() > 1:
        raise CorruptSource(f"{path}: float images must lie in [0, 1], got {array.min()}..{array.max()}")
    return array


def load_own_data(folder: str | Path) -> OwnData:
    """Read a folder in the format above. Raises SourceUnavailable / CorruptSource naming the file and line."""
    folder = Path(folder)
    index = folder / "documents.jsonl"
    if not index.is_file():
        raise SourceUnavailable(f"own data: {index} not found (see datamodules/own.py for the format)")
    texts: list[tuple[str, bool | float]] = []
    images: dict[tuple, list] = {}  # shape -> [(image, caption, split draw)]
    speech: list[tuple[Utterance, bool | float]] = []
    for n, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record.get("text"), str):
                raise CorruptSource("every document needs a 'text' string")
            if "image" in record:
                img = _image(folder / record["image"])
                images.setdefault(img.shape, []).append((img, record["text"], _split(record, img.tobytes())))
            elif "audio" in record:
                audio = np.load(folder / record["audio"]).astype(np.float32)
                if audio.ndim != 1 or "sample_rate" not in record:
                    raise CorruptSource("audio must be a 1-D waveform with a 'sample_rate'")
                utterance = Utterance(record["text"], audio, int(record["sample_rate"]), "own")
                speech.append((utterance, _split(record, audio.tobytes())))
            else:
                texts.append((record["text"], _split(record, b"")))
        except (ValueError, OSError, CorruptSource) as exc:
            raise CorruptSource(f"{index}:{n}: {exc}") from exc
    text_val = _assign([d for _, d in texts], "text", index)
    if not any(not v for v in text_val) and not images:
        raise SourceUnavailable(f"own data: {index} holds no training documents")
    sets = []
    for shape, items in images.items():
        name = "own:" + "x".join(map(str, shape))
        val = _assign([d for _, _, d in items], f"the images of {name}", index)
        split = np.array(["val" if v else "train" for v in val])
        sets.append(ImageSet(np.stack([i for i, _, _ in items]), [c for _, c, _ in items], split, name))
    speech_val = _assign([d for _, d in speech], "speech", index)
    text = TextCorpus(
        [t for (t, _), v in zip(texts, text_val, strict=True) if not v],
        [t for (t, _), v in zip(texts, text_val, strict=True) if v],
        [f"own data: {folder}"],
        [],
    )
    utterances = [u for u, _ in speech]
    return OwnData(
        text,
        sets,
        [u for u, v in zip(utterances, speech_val, strict=True) if not v],
        [u for u, v in zip(utterances, speech_val, strict=True) if v],
        [f"own data: {folder}"],
    )
