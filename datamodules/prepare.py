"""Data preparation: sources -> fitted tokenizers -> encoded corpus, cached once for every setting.

`prepare_corpus(params, cache_root)` loads the sources (the Debian defaults, pip-only fallbacks, or a researcher's own
folder, see datamodules/own.py), fits the tokenizers on the training split only (byte-level BPE, one k-means VQ
codebook per image source, a normaliser for continuous patches, k-means speech units), encodes everything and stores
it in a verified cache folder (datamodules/cache.py) with a dataset card. `load_corpus(folder)` reads it back.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from datamodules import cache
from datamodules.errors import DataMismatch, SourceUnavailable
from datamodules.images import load_digits_images, load_emoji, load_fashion_mnist
from datamodules.own import OwnData, data_name, load_own_data
from datamodules.patches import PatchNormalizer, PatchVQ
from datamodules.speech import EspeakSynth, Utterance, load_asterisk_prompts, synthesize_corpus
from datamodules.text import load_text_corpus, load_tokenizer, save_tokenizer, train_bpe
from datamodules.units import SpeechUnits
from datamodules.vocab import SPECIAL_TOKENS


@dataclass(frozen=True)
class PrepareParams:
    """Every parameter that changes the prepared corpus (and so the cache key)."""

    text_vocab_size: int = 2048
    image_patch: int = 4
    image_codebook: int = 256
    fashion_train_images: int = 10000
    emoji: bool = True
    speech_units: int = 64
    speech_train_utterances: int = 1500
    speech_val_utterances: int = 200
    speech_chars: tuple[int, int] = (20, 70)
    seed: int = 0
    own_data: str | None = None
    prefer_debian: bool = True


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


def as_float(images_u8: np.ndarray) -> np.ndarray:
    return images_u8.astype(np.float32) / 255.0


def as_rgb(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 1) -> (N, H, W, 3): grayscale repeated, so all sources share one continuous patch width."""
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _load_sources(p: PrepareParams) -> OwnData:
    """Text corpus and image sets (speech comes later, only when asked for) with the sources used and warnings."""
    if p.own_data:
        return load_own_data(p.own_data)
    text = load_text_corpus(prefer_debian=p.prefer_debian)
    sources, warns = list(text.sources), list(text.warnings)
    images = []
    try:
        images.append(load_fashion_mnist(limit_train=p.fashion_train_images))
        sources.append("fashion_mnist (Debian dataset-fashion-mnist)")
    except SourceUnavailable as exc:
        warns.append(f"Fashion-MNIST unavailable, using sklearn digits instead: {exc}")
        images.append(load_digits_images())
        sources.append("sklearn digits (pip fallback)")
    if p.emoji:
        try:
            images.append(load_emoji())
            sources.append("emoji (Debian fonts-noto-color-emoji + PyPI emoji names)")
        except SourceUnavailable as exc:
            warns.append(f"emoji images skipped: {exc}")
    text.warnings = warns
    return OwnData(text, images, [], [], sources)


def _speech_texts(texts: list[str], seed: int) -> list[str]:
    """Texts to speak, in a seeded order so the chosen sentences span the corpus rather than its first novel."""
    order = np.random.default_rng(seed).permutation(len(texts))
    return [texts[i] for i in order]


def _encode_speech(units: SpeechUnits, utts: list[Utterance], tok, source: str) -> SpeechSplit:
    return SpeechSplit(
        Ragged.from_rows([np.array(tok.encode(u.text).ids) for u in utts]),
        Ragged.from_rows([units.encode(u.audio, u.sample_rate) for u in utts]),
        source,
    )


def _build(folder: Path, p: PrepareParams, cache_root: Path) -> None:
    """Everything prepare_corpus caches, written into `folder`.

    A corpus with speech from the default sources is the image-text corpus of the same parameters (the settings
    without speech use it) plus speech: its tokenizer, text and images are taken from that corpus, which is prepared
    first if no process has (another process preparing it is waited for), while the speech is synthesised.
    """
    times: dict[str, float] = {}
    start = time.perf_counter()
    loaded = _load_sources(p)
    times["load_sources_s"] = time.perf_counter() - start
    speech = bool(loaded.speech_train) or (not p.own_data and p.speech_train_utterances > 0)
    sources, warns = list(loaded.sources), list(loaded.text.warnings)
    if speech and not p.own_data:
        splits, units = _speech(p, loaded, sources, warns, times)
        t = time.perf_counter()
        tok, arrays, base = _image_text_from(prepare_corpus(image_text_params(p), cache_root, verbose=False), folder)
        card = {**base, "sources": sources, "warnings": warns, "params": _params_dict(p)}
        times["image_text_s"] = time.perf_counter() - t
    else:
        tok, arrays, card = _build_image_text(folder, p, loaded, sources, warns, times)
        splits, units = _speech(p, loaded, sources, warns, times) if speech else (None, None)
    if splits is not None:
        t = time.perf_counter()
        card["speech"] = _build_speech(folder, p, splits, units, tok, arrays)
        times["speech_encoding_s"] = time.perf_counter() - t
    np.savez(
        folder / "ragged.npz",
        **{f"{n}_{part}": getattr(r, part) for n, r in arrays.items() for part in ("values", "offsets")},
    )
    card["build_time_s"] = {**times, "total_s": time.perf_counter() - start}
    (folder / "card.json").write_text(json.dumps(card, indent=1, default=float))


def _speech(p: PrepareParams, loaded: OwnData, sources: list, warns: list, times: dict):
    """The speech splits (synthesised, or the own data's) and the unit codebook fitted on the training split."""
    t = time.perf_counter()
    splits = _speech_splits(p, loaded, sources, warns)
    units = SpeechUnits(n_units=p.speech_units, seed=p.seed).fit(splits["speech_train"])
    times["speech_s"] = time.perf_counter() - t
    return splits, units


def image_text_params(p: PrepareParams) -> PrepareParams:
    """The parameters of the corpus without speech that the settings without speech use (MultiModalDataModule)."""
    return replace(p, speech_train_utterances=0, speech_val_utterances=0)


def _image_text_from(source: Path, folder: Path) -> tuple[object, dict[str, Ragged], dict]:
    """The tokenizer, text and images of the prepared corpus `source`, copied into `folder`: (tokenizer, its text and
    caption arrays, its card without the build times)."""
    for name in ["tokenizer.json", *(f.name for f in sorted(source.glob("image*.npz")))]:
        shutil.copyfile(source / name, folder / name)
    with np.load(source / "ragged.npz") as z:
        names = [n[: -len("_values")] for n in z.files if n.endswith("_values")]
        arrays = {n: Ragged(z[f"{n}_values"], z[f"{n}_offsets"]) for n in names}
    card = json.loads((source / "card.json").read_text())
    card.pop("build_time_s", None)
    return load_tokenizer(folder / "tokenizer.json"), arrays, card


def _build_image_text(folder: Path, p: PrepareParams, loaded: OwnData, sources: list, warns: list, times: dict):
    """Fit the tokenizer and the image codebooks and encode the text and images into `folder`: (tokenizer, the text
    and caption arrays, the card so far, whose sources and warnings are the lists given)."""
    text, image_sets = loaded.text, loaded.images
    t = time.perf_counter()
    # Captions and transcripts are text too: the BPE sees them beside the passages (training split only).
    captions = [c for s in image_sets for c, split in zip(s.captions, s.split, strict=True) if split == "train"]
    bpe_texts = text.train + captions + [u.text for u in loaded.speech_train]
    tok = train_bpe(bpe_texts, p.text_vocab_size, list(SPECIAL_TOKENS), seed=p.seed)
    save_tokenizer(tok, folder / "tokenizer.json")
    encode = lambda texts: Ragged.from_rows([np.array(e.ids) for e in tok.encode_batch(texts)])  # noqa: E731
    text_train, text_val = encode(text.train), encode(text.val)
    arrays = {"text_train": text_train, "text_val": text_val}
    times["text_s"] = time.perf_counter() - t
    card: dict = {"sources": sources, "warnings": warns, "params": _params_dict(p)}
    card["text"] = {
        "train_documents": len(text.train),
        "val_documents": len(text.val),
        "train_tokens": text_train.total(),
        "val_tokens": text_val.total(),
        "train_chars_per_token": sum(map(len, text.train)) / max(text_train.total(), 1),
    }

    t = time.perf_counter()
    card["images"] = []
    for k, s in enumerate(image_sets):
        train = s.split == "train"
        vq = PatchVQ.fit(s.images[train], patch=p.image_patch, codebook_size=p.image_codebook, seed=p.seed)
        norm = PatchNormalizer.fit(as_rgb(s.images[train]), p.image_patch)
        codes = vq.encode(s.images)
        np.savez(
            folder / f"image{k}.npz",
            images=np.round(s.images * 255).astype(np.uint8),
            is_val=~train,
            codes=codes.astype(np.int16),
            name=np.array(s.source),
            **{f"vq_{n}": v for n, v in vq.state_dict().items()},
            **{f"norm_{n}": v for n, v in norm.state_dict().items()},
        )
        arrays[f"captions{k}"] = encode(s.captions)
        card["images"].append(
            {
                "source": s.source,
                "train_images": int(train.sum()),
                "val_images": int((~train).sum()),
                "image_shape": list(s.images.shape[1:]),
                "tokens_per_image": int(codes.shape[1]),
                "vq_codebook": p.image_codebook,
                "vq_val_mse": vq.reconstruction_mse(s.images[~train]),
                "pixel_variance": float(s.images[~train].var()),
            }
        )
    times["images_s"] = time.perf_counter() - t
    return tok, arrays, card


def _speech_splits(p: PrepareParams, loaded: OwnData, sources: list, warns: list) -> dict[str, list[Utterance]]:
    """Own utterances, or espeak-ng reading the text corpus (train/val) plus the real Asterisk prompts."""
    if p.own_data:
        return {"speech_train": loaded.speech_train, "speech_val": loaded.speech_val}
    synth = EspeakSynth()
    lo, hi = p.speech_chars
    splits = {
        name: synthesize_corpus(_speech_texts(texts, p.seed), synth, max_chars=hi, min_chars=lo, max_sentences=n)
        for name, texts, n in (
            ("speech_train", loaded.text.train, p.speech_train_utterances),
            ("speech_val", loaded.text.val, p.speech_val_utterances),
        )
    }
    sources.append(f"speech: espeak-ng in-process ({synth.source}) reading the text corpus")
    try:
        splits["speech_real_val"] = load_asterisk_prompts()
        sources.append("real speech validation: Asterisk prompts, Allison Smith (Debian asterisk-core-sounds-en-wav)")
    except SourceUnavailable as exc:
        warns.append(f"no real-speech validation set: {exc}")
    return splits


def _build_speech(folder: Path, p: PrepareParams, splits: dict[str, list[Utterance]], units: SpeechUnits, tok,
                  arrays: dict) -> dict:  # fmt: skip
    """Save the unit codebook (fitted on the training utterances); encode every split (transcripts and units)."""
    np.savez(folder / "speech_units.npz", **units.state())
    info = {"units": p.speech_units}
    for name, utts in splits.items():
        split = _encode_speech(units, utts, tok, utts[0].source if utts else "")
        arrays[f"{name}_transcripts"], arrays[f"{name}_units"] = split.transcripts, split.units
        seconds = sum(u.duration for u in utts)
        info[name] = {
            "utterances": len(utts),
            "minutes": seconds / 60,
            "units": split.units.total(),
            "units_per_second": split.units.total() / max(seconds, 1e-9),
        }
    return info


def _params_dict(p: PrepareParams) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.__dict__.items()}


def prepare_corpus(p: PrepareParams, cache_root: str | Path, verbose: bool = True) -> Path:
    """Build (or find and verify) the cached corpus for `p`; prints the dataset card when it builds."""
    built = []

    def build(folder: Path) -> None:
        try:
            _build(folder, p, Path(cache_root))
        except DataMismatch as exc:  # a fit's sizes, said of the corpus the user named
            raise DataMismatch(f"{data_name(p.own_data)}: {exc}") if p.own_data else exc from None
        built.append(True)

    folder, _ = cache.build_or_load(cache_root, {"corpus": _params_dict(p)}, build)
    if built and verbose:
        print(format_card(json.loads((folder / "card.json").read_text())))
    return folder


def load_corpus(folder: str | Path) -> Corpus:
    """Read a prepared corpus back (the folder was verified by prepare_corpus)."""
    folder = Path(folder)
    card = json.loads((folder / "card.json").read_text())
    with np.load(folder / "ragged.npz") as z:
        ragged = {
            n[: -len("_values")]: Ragged(z[n], z[n[: -len("_values")] + "_offsets"])
            for n in z.files
            if n.endswith("_values")
        }
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
