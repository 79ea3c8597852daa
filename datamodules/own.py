"""A researcher's own corpus, read through the same preparation path as the default sources.

On-disk format: a folder holding `documents.jsonl`, one JSON object per line, paths relative to the folder:

    {"text": "A passage of text."}                                             text-only document
    {"text": "a caption", "image": "images/0001.npy"}                          caption + image
    {"text": "a transcript", "audio": "audio/0001.npy", "sample_rate": 16000}  transcript + speech

Images are `.npy` arrays (H, W) or (H, W, C) with C = 1 (grey) or 3 (RGB), uint8 or float in [0, 1]; images of one
shape form one source with its own VQ codebook (so the patch size must divide H and W). Audio is a mono float `.npy`
waveform in [-1, 1] with its sample rate. An optional `"split": "train" | "val"` fixes a document's split; otherwise
a stable hash of its text and its image or audio bytes puts about 10% in validation. Every modality present gets
validation and training documents: if the hash drew none on one side (a small set), the unmarked document of
smallest (largest) hash moves there; a modality where that is impossible (a single document) fails, saying how to
mark one.

Every document is checked as it is read, and the first bad one fails as `CorruptSource` naming `documents.jsonl`, its
line and the array file: a line that is not one JSON object, a missing or non-`.npy` file (pickled object arrays are
never loaded), an empty array, NaN or inf values, a dtype that is not an image's (uint8, any integer type holding
0..255, float in [0, 1]) or a waveform's (float), an image that is not (H, W) or (H, W, 1 or 3), audio that is not 1-D
or lacks a positive integer `sample_rate`. What the sizes must reach (speech frames for the unit codebook, patches for
an image codebook, sequences for a batch) is checked where those are fitted and packed (`DataMismatch`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.hashing import stable_fraction
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


def documents_file(folder: str | Path) -> Path:
    """The index of an own-data folder, the file every own-data error names."""
    return Path(folder) / "documents.jsonl"


def data_name(own_data: str | None) -> str:
    """The corpus as errors name it: own data by its documents.jsonl."""
    return f"own data {documents_file(own_data)}" if own_data else "the default corpus"


def _array(folder: Path, record: dict, key: str) -> tuple[Path, np.ndarray]:
    """The `.npy` file a document names under `key`, and its array; never unpickles (an object array is refused)."""
    name = record[key]
    if not isinstance(name, str) or not name:
        raise CorruptSource(f"{key!r} must be the path of a .npy file relative to {folder}, got {name!r}")
    path = folder / name
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        array = np.load(path, allow_pickle=False) if magic == b"\x93NUMPY" else None
    except FileNotFoundError:
        raise CorruptSource(f"{key} {path}: no such file") from None
    except OSError as exc:
        raise CorruptSource(f"{key} {path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:  # numpy's: an object array, or a file cut short
        raise CorruptSource(f"{key} {path}: not a numeric .npy array ({exc})") from None
    if array is None:  # np.load would open an .npz archive, and call any other file a refused pickle
        raise CorruptSource(f"{key} {path}: not a .npy file (write it with numpy.save)")
    return path, array


def _finite(path: Path, key: str, array: np.ndarray) -> None:
    """CorruptSource unless the array holds values, all of them finite (a NaN reaches the k-means fits unnamed)."""
    if array.size == 0:
        raise CorruptSource(f"{key} {path}: empty (shape {array.shape})")
    bad = int(np.count_nonzero(~np.isfinite(array))) if array.dtype.kind == "f" else 0
    if bad:
        raise CorruptSource(f"{key} {path}: holds NaN or inf in {bad} of its {array.size} values")


def _image(folder: Path, record: dict) -> np.ndarray:
    """(H, W, C) float32 in [0, 1]. Integer images are 8-bit pixels (0..255) whatever their integer type; bool is
    refused (a mask's True would be the darkest grey, not white)."""
    path, array = _array(folder, record, "image")
    kind = array.dtype.kind
    if kind not in "uif":
        raise CorruptSource(f"image {path}: dtype {array.dtype}; an image is uint8 (0..255) or float in [0, 1]")
    _finite(path, "image", array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise CorruptSource(
            f"image {path}: shape {array.shape}; an image is (H, W) or (H, W, C) with C = 1 (grey) or 3 (RGB)"
        )
    low, high = array.min(), array.max()
    if kind in "ui":
        if low < 0 or high > 255:
            raise CorruptSource(f"image {path}: integer images hold 8-bit pixels (0..255), got {low}..{high}")
        return array.astype(np.float32) / 255
    if low < 0 or high > 1:
        raise CorruptSource(f"image {path}: float images must lie in [0, 1], got {low}..{high}")
    return array.astype(np.float32)


def _audio(folder: Path, record: dict) -> tuple[np.ndarray, int]:
    """(S,) float32 waveform and its sample rate."""
    rate = record.get("sample_rate")
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise CorruptSource(f"'sample_rate' must be a positive integer (samples per second), got {rate!r}")
    path, array = _array(folder, record, "audio")
    if array.dtype.kind != "f":
        raise CorruptSource(
            f"audio {path}: dtype {array.dtype}; audio is a float waveform in [-1, 1] (int16 PCM: divide by 32768)"
        )
    if array.ndim != 1:
        raise CorruptSource(f"audio {path}: shape {array.shape}; audio is a 1-D mono waveform (S,)")
    _finite(path, "audio", array)
    return array.astype(np.float32), rate


def _record(line: bytes) -> dict:
    """One line of documents.jsonl as a document: a JSON object with a "text" string, and an image or audio."""
    try:
        record = json.loads(line.decode("utf-8-sig"))  # -sig: an editor's byte-order mark on the first line
    except UnicodeDecodeError as exc:
        raise CorruptSource(f"not UTF-8 text (byte {line[exc.start]:#04x} at column {exc.start + 1})") from None
    except json.JSONDecodeError as exc:
        raise CorruptSource(f"not valid JSON ({exc.msg}: column {exc.colno}); each line is one JSON object") from None
    if not isinstance(record, dict):
        raise CorruptSource(f'a document is a JSON object ({{"text": ...}}), got {type(record).__name__} {record!r}')
    text = record.get("text")
    if not isinstance(text, str):
        raise CorruptSource(f"every document needs a 'text' string, got {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CorruptSource(f"the text holds a lone surrogate ({text[exc.start]!r}), which is no character") from None
    if "image" in record and "audio" in record:
        raise CorruptSource("a document holds an 'image' or an 'audio', not both")
    return record


def load_own_data(folder: str | Path) -> OwnData:
    """Read a folder in the format above. Raises SourceUnavailable / CorruptSource naming the file and line."""
    folder = Path(folder)
    index = documents_file(folder)
    if not index.is_file():
        raise SourceUnavailable(f"own data: {index} not found (see datamodules/own.py for the format)")
    try:
        lines = index.read_bytes().split(b"\n")  # not splitlines: a JSON string may hold U+2028
    except OSError as exc:
        raise CorruptSource(f"own data: {index} cannot be read ({exc.strerror or exc})") from None
    texts: list[tuple[str, bool | float]] = []
    images: dict[tuple, list] = {}  # shape -> [(image, caption, split draw)]
    speech: list[tuple[Utterance, bool | float]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = _record(line)
            if "image" in record:
                img = _image(folder, record)
                images.setdefault(img.shape, []).append((img, record["text"], _split(record, img.tobytes())))
            elif "audio" in record:
                audio, rate = _audio(folder, record)
                utterance = Utterance(record["text"], audio, rate, "own")
                speech.append((utterance, _split(record, audio.tobytes())))
            else:
                texts.append((record["text"], _split(record, b"")))
        except CorruptSource as exc:
            raise CorruptSource(f"{index}:{n}: {exc}") from None
    text_val = _assign([d for _, d in texts], "text", index)
    if all(text_val) and not images:
        raise SourceUnavailable(f"own data: {index} holds no training documents")
    sets = []
    for shape, items in images.items():
        name = "own:" + "x".join(map(str, shape))
        val = _assign([d for _, _, d in items], f"the images of {name}", index)
        split = np.array(["val" if v else "train" for v in val])
        sets.append(ImageSet(np.stack([i for i, _, _ in items]), [c for _, c, _ in items], split, name))
    speech_val = _assign([d for _, d in speech], "speech", index)
    text = TextCorpus(*_by_split([t for t, _ in texts], text_val), [f"own data: {folder}"], [])
    return OwnData(text, sets, *_by_split([u for u, _ in speech], speech_val), [f"own data: {folder}"])


def _by_split(items: list, val: list[bool]) -> tuple[list, list]:
    """(the training items, the validation items), in their order."""
    return [x for x, v in zip(items, val, strict=True) if not v], [x for x, v in zip(items, val, strict=True) if v]
