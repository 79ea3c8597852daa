"""A researcher's own corpus, read through the same preparation path as the default sources.

On-disk format: a folder holding `documents.jsonl`, one JSON object per line, paths relative to the folder:

    {"text": "A passage of text."}                                             text-only document
    {"text": "a caption", "image": "images/0001.npy"}                          caption + image
    {"text": "a transcript", "audio": "audio/0001.npy", "sample_rate": 16000}  transcript + speech

Images are `.npy` arrays (H, W) or (H, W, C), uint8 or float in [0, 1]; images of one shape form one source with
its own VQ codebook (so the patch size must divide H and W). Audio is a mono float `.npy` waveform in [-1, 1] with
its sample rate. An optional `"split": "train" | "val"` fixes a document's split; otherwise a stable hash of its
text puts about 10% in validation.
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


def _is_val(record: dict) -> bool:
    split = record.get("split")
    if split is not None:
        if split not in ("train", "val"):
            raise CorruptSource(f"split must be 'train' or 'val', got {split!r}")
        return split == "val"
    return stable_fraction(record["text"]) < VAL_FRACTION


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
    texts: dict[bool, list[str]] = {False: [], True: []}
    images: dict[tuple, list] = {}
    speech: dict[bool, list[Utterance]] = {False: [], True: []}
    for n, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record.get("text"), str):
                raise CorruptSource("every document needs a 'text' string")
            val = _is_val(record)
            if "image" in record:
                img = _image(folder / record["image"])
                images.setdefault(img.shape, []).append((img, record["text"], val))
            elif "audio" in record:
                audio = np.load(folder / record["audio"]).astype(np.float32)
                if audio.ndim != 1 or "sample_rate" not in record:
                    raise CorruptSource("audio must be a 1-D waveform with a 'sample_rate'")
                speech[val].append(Utterance(record["text"], audio, int(record["sample_rate"]), "own"))
            else:
                texts[val].append(record["text"])
        except (ValueError, OSError, CorruptSource) as exc:
            raise CorruptSource(f"{index}:{n}: {exc}") from exc
    if not texts[False] and not any(images.values()):
        raise SourceUnavailable(f"own data: {index} holds no training documents")
    sets = []
    for shape, items in images.items():
        name = "own:" + "x".join(map(str, shape))
        split = np.array(["val" if v else "train" for _, _, v in items])
        sets.append(ImageSet(np.stack([i for i, _, _ in items]), [c for _, c, _ in items], split, name))
    text = TextCorpus(texts[False], texts[True], [f"own data: {folder}"], [])
    return OwnData(text, sets, speech[False], speech[True], [f"own data: {folder}"])
