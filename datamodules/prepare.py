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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from datamodules import cache
from datamodules.corpus import Ragged, format_card, load_ragged, save_ragged
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


@dataclass
class Found:
    """What a preparation step used and what it went without: the dataset card's sources and warnings."""

    sources: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _build(folder: Path, p: PrepareParams, base: Path | None) -> None:
    """Everything prepare_corpus caches, written into `folder`. `base`, when given, is the prepared image-text corpus
    whose tokenizer, text and images this corpus takes (it adds synthesised speech)."""
    times: dict[str, float] = {}
    start = time.perf_counter()
    loaded = _load_sources(p)
    times["load_sources_s"] = time.perf_counter() - start
    found = Found(list(loaded.sources), list(loaded.text.warnings))
    if base is not None:
        t = time.perf_counter()
        splits, units = _speech(p, loaded, found)
        times["speech_s"] = time.perf_counter() - t
        t = time.perf_counter()
        tok, arrays, card = _image_text_from(base, folder)
        times["image_text_s"] = time.perf_counter() - t
    else:
        tok, arrays, card, image_text_times = _build_image_text(folder, p, loaded)
        times |= image_text_times
        splits = units = None
        if loaded.speech_train or _synthesises_speech(p):
            t = time.perf_counter()
            splits, units = _speech(p, loaded, found)
            times["speech_s"] = time.perf_counter() - t
    card = {"sources": found.sources, "warnings": found.warnings, "params": asdict(p)} | {
        k: v for k, v in card.items() if k not in ("sources", "warnings", "params")
    }
    if splits is not None:
        t = time.perf_counter()
        speech_arrays, card["speech"] = _build_speech(folder, p, splits, units, tok)
        arrays |= speech_arrays
        times["speech_encoding_s"] = time.perf_counter() - t
    save_ragged(folder / "ragged.npz", arrays)
    card["build_time_s"] = {**times, "total_s": time.perf_counter() - start}
    (folder / "card.json").write_text(json.dumps(card, indent=1, default=float))


def _synthesises_speech(p: PrepareParams) -> bool:
    """Whether the corpus of `p` holds speech synthesised from the default sources (own data bring their own)."""
    return not p.own_data and p.speech_train_utterances > 0


def image_text_params(p: PrepareParams) -> PrepareParams:
    """The parameters of the corpus without speech that the settings without speech use (MultiModalDataModule)."""
    return replace(p, speech_train_utterances=0, speech_val_utterances=0)


def _image_text_from(source: Path, folder: Path) -> tuple[object, dict[str, Ragged], dict]:
    """The tokenizer, text and images of the prepared corpus `source`, copied into `folder`: (tokenizer, its text and
    caption arrays, its card without the build times)."""
    for name in ["tokenizer.json", *(f.name for f in sorted(source.glob("image*.npz")))]:
        shutil.copyfile(source / name, folder / name)
    card = json.loads((source / "card.json").read_text())
    card.pop("build_time_s", None)
    return load_tokenizer(folder / "tokenizer.json"), load_ragged(source / "ragged.npz"), card


def _build_image_text(folder: Path, p: PrepareParams, loaded: OwnData):
    """Fit the tokenizer and the image codebooks and encode the text and images into `folder`: (tokenizer, the text
    and caption arrays, the card's text and image entries, the seconds each took)."""
    text, image_sets = loaded.text, loaded.images
    times = {}
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
    card: dict = {}
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
    return tok, arrays, card, times


def _speech(p: PrepareParams, loaded: OwnData, found: Found) -> tuple[dict[str, list[Utterance]], SpeechUnits]:
    """The speech splits (own utterances, or espeak-ng reading the text corpus (train/val) plus the real Asterisk
    prompts) and the unit codebook fitted on the training split; what the speech came from is added to `found`."""
    if p.own_data:
        splits = {"speech_train": loaded.speech_train, "speech_val": loaded.speech_val}
    else:
        synth = EspeakSynth()
        lo, hi = p.speech_chars
        splits = {
            name: synthesize_corpus(_speech_texts(texts, p.seed), synth, max_chars=hi, min_chars=lo, max_sentences=n)
            for name, texts, n in (
                ("speech_train", loaded.text.train, p.speech_train_utterances),
                ("speech_val", loaded.text.val, p.speech_val_utterances),
            )
        }
        found.sources.append(f"speech: espeak-ng in-process ({synth.source}) reading the text corpus")
        try:
            splits["speech_real_val"] = load_asterisk_prompts()
            found.sources.append(
                "real speech validation: Asterisk prompts, Allison Smith (Debian asterisk-core-sounds-en-wav)"
            )
        except SourceUnavailable as exc:
            found.warnings.append(f"no real-speech validation set: {exc}")
    return splits, SpeechUnits(n_units=p.speech_units, seed=p.seed).fit(splits["speech_train"])


def _build_speech(folder: Path, p: PrepareParams, splits: dict[str, list[Utterance]], units: SpeechUnits, tok):
    """Save the unit codebook (fitted on the training utterances); encode every split (transcripts and units):
    (their arrays, the card's speech entry)."""
    np.savez(folder / "speech_units.npz", **units.state())
    arrays, info = {}, {"units": p.speech_units}
    for name, utts in splits.items():
        arrays[f"{name}_transcripts"] = Ragged.from_rows([np.array(tok.encode(u.text).ids) for u in utts])
        arrays[f"{name}_units"] = encoded = Ragged.from_rows([units.encode(u.audio, u.sample_rate) for u in utts])
        seconds = sum(u.duration for u in utts)
        info[name] = {
            "utterances": len(utts),
            "minutes": seconds / 60,
            "units": encoded.total(),
            "units_per_second": encoded.total() / max(seconds, 1e-9),
        }
    return arrays, info


def prepare_corpus(p: PrepareParams, cache_root: str | Path, verbose: bool = True) -> Path:
    """Build (or find and verify) the cached corpus for `p`; prints the dataset card when it builds.

    A corpus with synthesised speech is the image-text corpus of the same parameters (the settings without speech use
    it) plus speech: that corpus is prepared first, or found, or waited for while another process prepares it, and
    its tokenizer, text and images are copied, not fitted again.
    """
    base = _prepare(image_text_params(p), Path(cache_root), None, verbose=False) if _synthesises_speech(p) else None
    return _prepare(p, Path(cache_root), base, verbose)


def _prepare(p: PrepareParams, cache_root: Path, base: Path | None, verbose: bool) -> Path:
    built = []

    def build(folder: Path) -> None:
        try:
            _build(folder, p, base)
        except DataMismatch as exc:  # a fit's sizes, said of the corpus the user named
            raise DataMismatch(f"{data_name(p.own_data)}: {exc}") if p.own_data else exc from None
        built.append(True)

    folder, _ = cache.build_or_load(cache_root, {"corpus": asdict(p)}, build)
    if built and verbose:
        print(format_card(json.loads((folder / "card.json").read_text())))
    return folder
