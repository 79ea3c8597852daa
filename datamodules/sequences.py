"""Documents, packing into fixed-length sequences, and the per-position training targets.

A document is a flat run of joint-vocabulary ids (datamodules/vocab.py) plus, for Transfusion, the continuous patch
vectors of its `<patch>` positions, and the spans that must never be cut: an image (with its <boi>/<eoi>) or an
utterance (with its <boa>/<eoa>). Documents are packed greedily into sequences of seq_len + 1 ids (inputs are the
first seq_len, next-token targets the last seq_len). Text may continue in the next sequence; an atomic span never
does: it moves to the next sequence whole (so does a paired document that fits in one sequence, to keep a caption
with its image), and the rest of the current sequence is padded.

Targets per input position t: the id at t + 1, or IGNORE where that is padding or a continuous patch (Transfusion's
image loss is the noise at the patch's own position instead; see `diffusion_inputs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from datamodules.vocab import BOI, BOS, EOS, IGNORE, PAD, PATCH, JointVocab


@dataclass
class Document:
    """One document: ids (n,) int64, patches (number of <patch> ids, P) float32 or None, atomic spans [(start, end)),
    and the image source of each position (n,) int (-1 off images; None: no image)."""

    ids: np.ndarray
    patches: np.ndarray | None = None
    spans: list[tuple[int, int]] = field(default_factory=list)
    sources: np.ndarray | None = None


def text_document(text_ids: np.ndarray) -> Document:
    """<bos> text <eos>: a passage, splittable anywhere."""
    return Document(np.concatenate([[BOS], np.asarray(text_ids, dtype=np.int64), [EOS]]))


def paired_document(
    text_ids: np.ndarray,
    block: np.ndarray,
    open_id: int,
    close_id: int,
    text_first: bool,
    patches=None,
    source: int = -1,
) -> Document:
    """<bos> text <open> block <close> <eos> (or the block first): caption + image, or transcript + speech.

    Args:
        text_ids: the caption / transcript.
        block: joint ids of the image codes or speech units (for a continuous image: <patch> placeholders).
        open_id, close_id: <boi>/<eoi> or <boa>/<eoa>.
        text_first: caption (transcript) before the image (utterance).
        patches: (n, P) continuous patches when `block` holds <patch> placeholders.
        source: the image source of an image block (its index in the corpus), -1 for speech.
    """
    text = np.asarray(text_ids, dtype=np.int64)
    wrapped = np.concatenate([[open_id], np.asarray(block, dtype=np.int64), [close_id]])
    parts = [text, wrapped] if text_first else [wrapped, text]
    ids = np.concatenate([[BOS], *parts, [EOS]])
    start = 1 + (len(text) if text_first else 0)
    sources = None
    if source >= 0:
        sources = np.full(len(ids), -1, dtype=np.int8)
        sources[start + 1 : start + 1 + len(block)] = source
    return Document(ids, patches, [(start, start + len(wrapped))], sources)


@dataclass
class PackedSequences:
    """Sequences of seq_len + 1 ids and, for Transfusion, their patches.

    Attributes:
        ids: (n, seq_len + 1) int64.
        patches: (total patches, P) float32, in sequence-then-position order, or None.
        patch_offsets: (n + 1,) int64; sequence i's patches are patches[patch_offsets[i]:patch_offsets[i + 1]].
        image_index: (n, seq_len + 1) int16, the index of the image (within its sequence) each <patch> belongs to,
            -1 elsewhere; one diffusion timestep is drawn per image.
        sources: (n, seq_len + 1) int8, the image source of each image position (codes or patches), -1 elsewhere.
    """

    ids: np.ndarray
    patches: np.ndarray | None = None
    patch_offsets: np.ndarray | None = None
    image_index: np.ndarray | None = None
    sources: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def pack_documents(documents: list[Document], seq_len: int) -> PackedSequences:
    """Greedy packing of documents, in the given order, into sequences of seq_len + 1 ids (see module docstring).

    Raises:
        ValueError: an atomic span (image or utterance with its markers) is longer than seq_len + 1.
    """
    width = seq_len + 1
    continuous = any(d.patches is not None for d in documents)
    rows, row_sources, row_patches = [], [], []  # the finished sequences' ids, image sources and patches
    cur, cur_sources, cur_patches, used = [], [], [], 0  # the same of the sequence being filled, and its length

    def flush() -> None:
        nonlocal cur, cur_sources, cur_patches, used
        if used:
            rows.append(np.concatenate([*cur, np.full(width - used, PAD, dtype=np.int64)]))
            row_sources.append(np.concatenate([*cur_sources, np.full(width - used, -1, dtype=np.int8)]))
            row_patches.append(cur_patches)
        cur, cur_sources, cur_patches, used = [], [], [], 0

    for doc in documents:
        for s, e in doc.spans:
            if e - s > width:
                raise ValueError(
                    f"seq_len={seq_len} is too short: an image or utterance needs {e - s} positions with its markers "
                    f"(seq_len + 1 must be >= {e - s}); raise seq_len or shorten the utterances/images"
                )
        if doc.spans and width - used < len(doc.ids) <= width:
            flush()  # keep a caption with its image (a transcript with its speech) when the pair fits in a sequence
        patch_pos = np.cumsum(doc.ids == PATCH)  # patches used up to and including each position
        pos = 0
        while pos < len(doc.ids):
            end = min(len(doc.ids), pos + width - used)
            for s, e in doc.spans:
                if s < end < e:  # would cut through an atomic span: stop before it
                    end = s
            if end <= pos:  # the next atomic span does not fit in what is left of this sequence
                flush()
                continue
            cur.append(doc.ids[pos:end])
            cur_sources.append(doc.sources[pos:end] if doc.sources is not None else np.full(end - pos, -1, np.int8))
            if doc.patches is not None:
                first = int(patch_pos[pos - 1]) if pos else 0
                cur_patches.append(doc.patches[first : int(patch_pos[end - 1])])
            used += end - pos
            pos = end
            if used == width:
                flush()
    flush()
    ids = np.stack(rows) if rows else np.zeros((0, width), dtype=np.int64)
    sources = np.stack(row_sources) if rows else np.zeros((0, width), dtype=np.int8)
    if not continuous:
        return PackedSequences(ids, sources=sources)
    counts = [sum(len(p) for p in ps) for ps in row_patches]
    dim = next(d.patches.shape[1] for d in documents if d.patches is not None)
    flat = [p for ps in row_patches for p in ps if len(p)]
    patches = np.concatenate(flat).astype(np.float32) if flat else np.zeros((0, dim), np.float32)
    return PackedSequences(ids, patches, np.concatenate([[0], np.cumsum(counts)]), _image_index(ids), sources)


def _image_index(ids: np.ndarray) -> np.ndarray:
    """Per position, which image of its sequence a <patch> belongs to (images are runs after each <boi>)."""
    image_number = np.cumsum(ids == BOI, axis=1) - 1
    return np.where(ids == PATCH, image_number, -1).astype(np.int16)


def next_token_targets(ids: np.ndarray) -> np.ndarray:
    """(..., seq_len + 1) ids -> (..., seq_len) targets: the next id, IGNORE where it is padding or a <patch>."""
    nxt = ids[..., 1:].astype(np.int64)
    return np.where((nxt == PAD) | (nxt == PATCH), IGNORE, nxt)


def target_modalities(targets: np.ndarray, vocab: JointVocab) -> np.ndarray:
    """Modality of each target id, -1 where the target is IGNORE."""
    return np.where(targets == IGNORE, -1, vocab.modality_of(targets))


def cosine_alpha_bar(n_steps: int = 1000, s: float = 0.008) -> np.ndarray:
    """ᾱ_t of the cosine schedule (Nichol & Dhariwal 2021) for t = 0..n_steps-1, betas clipped at 0.999."""
    f = np.cos((np.arange(n_steps + 1) / n_steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    return np.cumprod(1 - betas)


def diffusion_inputs(
    patches: np.ndarray, image_index: np.ndarray, alpha_bar: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise one sequence's clean patches (n, P), in position order, one DDPM timestep per image; `image_index`
    (positions,) is each position's image, -1 where not a patch, and `rng` fixes the timesteps and the noise.

    Returns:
        noised (n, P) = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, noise ε (n, P), timesteps (positions,) int64 (0 elsewhere).
    """
    n_images = int(image_index.max()) + 1 if image_index.size else 0
    per_image = rng.integers(0, len(alpha_bar), size=max(n_images, 1))
    mask = image_index >= 0
    t_pos = np.where(mask, per_image[np.maximum(image_index, 0)], 0).astype(np.int64)
    t_patch = t_pos[mask]
    noise = rng.standard_normal(patches.shape, dtype=np.float32)
    ab = alpha_bar[t_patch].astype(np.float32)[:, None]
    return np.sqrt(ab) * patches + np.sqrt(1 - ab) * noise, noise, t_pos
