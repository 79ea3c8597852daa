"""A one-page picture of the prepared data, to check by eye that the tokenizers are sane.

    python -m datamodules.data_overview --out docs/data.png [--setting three_modality] [--cache-dir .cache/data] \\
        [--seed 0]

The PNG shows, top to bottom:
1. images beside their VQ reconstructions (a few Fashion-MNIST and emoji validation images, captions as titles);
2. one utterance: its log-mel spectrogram, its per-frame speech units as a colour strip on the same time axis, and
   the merged unit sequence (what the model reads), with the transcript as title;
3. a few packed training sequences, decoded: text token by token (alternating colours mark BPE token boundaries,
   specials such as <boi> in bold), image spans decoded through their source's VQ and drawn inline, speech spans
   as "[speech: N units]" and one colour cell per unit.

`render_data_overview(dm, out_path)` draws it for a set-up `MultiModalDataModule`; `decode_image_span` turns the
joint ids of one image back into pixels.
"""

from __future__ import annotations

import argparse
import itertools
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.corpus import Corpus
from datamodules.settings import SETTINGS
from datamodules.speech import EspeakSynth
from datamodules.units import SpeechUnits, log_mel, merge_repeats
from datamodules.vocab import MODALITY_NAMES, PAD, SPECIAL_TOKENS, SPEECH, JointVocab

FONT = 8.5  # points, for the decoded sequences
CHAR_W = 0.602 * FONT  # DejaVu Sans Mono advance width
LINE_H = 1.45 * FONT
IMAGE_H = 3 * LINE_H  # inline images span three text lines
UNIT_W = 2.6  # points per speech unit cell
FIG_W, MARGIN, MARGIN_R = 12.0, 0.85, 0.6  # figure width, left and right margins, in inches
STRIP_W = (FIG_W - MARGIN - MARGIN_R) * 72  # points: width of a decoded-sequence panel
TOKEN_COLOURS = ("#1f3d7a", "#a0522d")  # alternate per BPE token, so token boundaries are visible
SPECIAL_COLOUR = "#127a2e"


# -- Decoding joint ids ------------------------------------------------------------------------------------------------


def image_code_ranges(corpus: Corpus, vocab: JointVocab) -> list[tuple[int, int]]:
    """[start, end) joint-id range of each image source's codes (sources are laid out in corpus order)."""
    sizes = (src.vq.codebook_size for src in corpus.images)
    return list(itertools.pairwise(itertools.accumulate(sizes, initial=vocab.image_offset)))


def decode_image_span(corpus: Corpus, vocab: JointVocab, ids: np.ndarray) -> tuple[int, np.ndarray]:
    """Joint ids of one image (without <boi>/<eoi>) -> (source index, (H, W, C) float image in [0, 1]).

    The source is the one whose code range holds the ids; its codes per image must equal the span length.

    Raises:
        ValueError: the ids span several sources, none, or the length does not match the source's image size.
    """
    ids = np.asarray(ids, dtype=np.int64)
    for k, (lo, hi) in enumerate(image_code_ranges(corpus, vocab)):
        if ids.size and ((ids >= lo) & (ids < hi)).all():
            src = corpus.images[k]
            if len(ids) != src.codes.shape[1]:
                raise ValueError(f"an image span of {len(ids)} codes, but {src.name} images have {src.codes.shape[1]}")
            return k, src.vq.decode((ids - lo)[None])[0]
    raise ValueError(f"ids {ids.min() if ids.size else '-'}..{ids.max() if ids.size else '-'} are not the codes of "
                     "one image source")  # fmt: skip


@dataclass
class Segment:
    """A run of one modality in a sequence: kind is "text", "image", "speech" or "pad"; ids are joint ids."""

    kind: str
    ids: np.ndarray


def split_segments(ids: np.ndarray, vocab: JointVocab) -> list[Segment]:
    """A packed row -> runs of text, image codes, speech units, and the trailing padding."""
    ids = np.asarray(ids, dtype=np.int64)
    n_real = len(ids)
    while n_real and ids[n_real - 1] == PAD:
        n_real -= 1
    real = ids[:n_real]
    runs = np.split(real, np.flatnonzero(np.diff(vocab.modality_of(real))) + 1) if n_real else []
    segments = [Segment(MODALITY_NAMES[vocab.modality_of(run[0])], run) for run in runs]
    if n_real < len(ids):
        segments.append(Segment("pad", ids[n_real:]))
    return segments


def _token_text(tokenizer, i: int) -> str:
    s = tokenizer.decode([int(i)], skip_special_tokens=False)
    s = s.replace("\n", "⏎").replace("\t", "⇥")
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in s) or "∅"


# -- Flow layout of one decoded sequence, in points --------------------------------------------------------------------


@dataclass
class _Item:
    kind: str  # "text", "special", "image", "units"
    width: float
    height: float
    payload: object
    colour: str = "black"


def _sequence_items(ids: np.ndarray, corpus: Corpus, vocab: JointVocab) -> list[_Item]:
    tok, items = corpus.tokenizer, []
    for seg in split_segments(ids, vocab):
        if seg.kind == "text":
            for j, i in enumerate(seg.ids):
                if int(i) < len(SPECIAL_TOKENS):
                    s = SPECIAL_TOKENS[int(i)]
                    items.append(_Item("special", len(s) * CHAR_W, LINE_H, s, SPECIAL_COLOUR))
                else:
                    s = _token_text(tok, i)
                    items.append(_Item("text", len(s) * CHAR_W, LINE_H, s, TOKEN_COLOURS[j % 2]))
        elif seg.kind == "image":
            k, img = decode_image_span(corpus, vocab, seg.ids)
            items.append(_Item("image", IMAGE_H * img.shape[1] / img.shape[0], IMAGE_H, img))
        elif seg.kind == "speech":
            label = f"[speech: {len(seg.ids)} units]"
            items.append(_Item("special", len(label) * CHAR_W, LINE_H, label, "#6a1b9a"))
            units = vocab.speech_units(seg.ids)
            for start in range(0, len(units), 16):  # chunks, so a long utterance can wrap
                chunk = units[start : start + 16]
                items.append(_Item("units", len(chunk) * UNIT_W, LINE_H, chunk))
        else:
            label = f"<pad>×{len(seg.ids)}"
            items.append(_Item("special", len(label) * CHAR_W, LINE_H, label, "#888888"))
    return items


def _flow(items: list[_Item], width: float) -> tuple[list[tuple[_Item, float, float]], float]:
    """Place items left to right, wrapping at `width`; returns (item, x, line bottom) and the total height."""
    lines: list[list[tuple[_Item, float]]] = [[]]
    x = 0.0
    for it in items:
        gap = 1.5 if it.kind in ("image", "units") or (lines[-1] and lines[-1][-1][0].kind == "image") else 0.0
        if it.kind == "units" and lines[-1] and lines[-1][-1][0].kind == "units":
            gap = 0.0
        if lines[-1] and x + gap + it.width > width:
            lines.append([])
            x, gap = 0.0, 0.0
            if it.kind == "text" and it.payload.startswith(" "):  # no leading space at the start of a line
                it = _Item(it.kind, it.width - CHAR_W, it.height, it.payload[1:], it.colour)
        lines[-1].append((it, x + gap))
        x += gap + it.width
    placed, y = [], 0.0
    for line in lines:
        y += max(it.height for it, _ in line) + 2.0
        placed += [(it, x0, y) for it, x0 in line]
    return placed, y + 2.0


def _draw_sequence(ax, items: list[_Item], n_units: int) -> None:
    import matplotlib.pyplot as plt

    placed, height = _flow(items, STRIP_W)
    ax.set_xlim(0, STRIP_W)
    ax.set_ylim(height, 0)
    ax.set(xticks=[], yticks=[])
    cmap = plt.get_cmap("turbo", max(n_units, 2))
    for it, x, bottom in placed:
        if it.kind in ("text", "special"):
            weight = "bold" if it.kind == "special" else "normal"
            ax.text(x, bottom - 2.5, it.payload, family="DejaVu Sans Mono", fontsize=FONT, color=it.colour,
                    weight=weight, va="baseline", ha="left")  # fmt: skip
        elif it.kind == "image":
            img = it.payload
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      extent=(x, x + it.width, bottom, bottom - it.height), interpolation="nearest")  # fmt: skip
        else:
            cells = np.asarray(it.payload)[None]
            ax.imshow(cells, cmap=cmap, vmin=0, vmax=max(n_units - 1, 1), aspect="auto", interpolation="nearest",
                      extent=(x, x + it.width, bottom - 1, bottom - it.height + 1))  # fmt: skip


def pick_sequences(ids: np.ndarray, vocab: JointVocab, corpus: Corpus, n: int = 4) -> list[int]:
    """Indices of n training rows with the most varied content (image sources and speech), first ones first."""
    ranges = image_code_ranges(corpus, vocab)
    scores = []
    for row in ids[: min(len(ids), 400)]:
        has = [((row >= lo) & (row < hi)).any() for lo, hi in ranges]
        has.append((vocab.modality_of(row) == SPEECH).any())
        scores.append(sum(has))
    order = np.argsort(-np.asarray(scores), kind="stable")
    return sorted(int(i) for i in order[:n])


# -- The figure --------------------------------------------------------------------------------------------------------


def _val_examples(src, n: int) -> np.ndarray:
    """n validation images of a source, spread over the split (deterministic)."""
    val = np.flatnonzero(src.is_val)
    pool = val if len(val) >= n else np.arange(len(src.images))
    return pool[np.linspace(0, len(pool) - 1, n).astype(int)]


def _utterance(dm) -> tuple[str, np.ndarray, int, np.ndarray | None]:
    """Transcript, audio, sample rate and cached merged units of the first training utterance (synthesised again)."""
    c = dm.corpus
    if c.speech_train is not None and len(c.speech_train.transcripts):
        text = c.tokenizer.decode(list(c.speech_train.transcripts[0]))
        cached = c.speech_train.units[0]
    else:
        text, cached = "The quick brown fox jumps over the lazy dog.", None
    audio, sr = EspeakSynth().synthesize(text)
    return text, audio, sr, cached


def render_data_overview(dm, out_path: str | Path, n_images: int = 8, n_sequences: int = 4, dpi: int = 110) -> Path:
    """Draw the data overview of a set-up `MultiModalDataModule` (discrete setting) into a PNG at `out_path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if dm.corpus is None:
        dm.setup("fit")
    if dm.continuous:
        raise ValueError("render_data_overview needs a setting with discrete image codes, not continuous patches")
    c, vocab = dm.corpus, dm.vocab
    units_model, units_file = None, dm.corpus_folder / "speech_units.npz"
    if units_file.exists():
        with np.load(units_file) as z:
            units_model = SpeechUnits.from_state({k: z[k] for k in z.files})

    rows = dm.train_set.packed.ids
    chosen = pick_sequences(rows, vocab, c, n_sequences)
    seq_items = [_sequence_items(rows[i], c, vocab) for i in chosen]

    img_h = 1.3 * 2 * len(c.images)  # inches
    speech_h = 4.0 if units_model is not None else 0.0
    seq_h = [_flow(items, STRIP_W)[1] / 72.0 for items in seq_items]  # drawn in points, one data unit = one point
    title_h, gap = 0.85, 0.5
    fig_h = title_h + img_h + gap + (speech_h + gap if speech_h else 0) + sum(h + gap for h in seq_h)
    fig = plt.figure(figsize=(FIG_W, fig_h))
    fig.suptitle(f"Data overview: {dm.setting}, seq_len {dm.seq_len}, joint vocab {vocab.size} (text {vocab.text_size}"
                 f", image {vocab.image_size}, speech {vocab.speech_size})", fontsize=13, weight="bold",
                 y=1 - 0.15 / fig_h)  # fmt: skip
    top = fig_h - title_h  # inches from the bottom, moving down

    def block(height: float) -> dict:
        """GridSpec keyword arguments for the next block of `height` inches."""
        nonlocal top
        rect = {"left": MARGIN / FIG_W, "right": 1 - MARGIN_R / FIG_W, "top": top / fig_h,
                "bottom": (top - height) / fig_h}  # fmt: skip
        top -= height + gap
        return rect

    # 1. images and their VQ reconstructions -----------------------------------------------------------------------
    grid = fig.add_gridspec(2 * len(c.images), n_images, hspace=0.4, wspace=0.12, **block(img_h))
    for k, src in enumerate(c.images):
        idx = _val_examples(src, n_images)
        recon = src.vq.decode(src.codes[idx])
        mse = float(np.mean((recon - src.images[idx] / 255.0) ** 2))
        for j, i in enumerate(idx):
            for r, img in enumerate((src.images[i] / 255.0, recon[j])):
                ax = fig.add_subplot(grid[2 * k + r, j])
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")  # fmt: skip
                ax.set(xticks=[], yticks=[])
                if r == 0:
                    caption = c.tokenizer.decode(list(src.captions[i]))
                    ax.set_title("\n".join(textwrap.wrap(caption, 22)[:2]), fontsize=8)
                if j == 0:
                    label = f"{src.name}\noriginal" if r == 0 else f"VQ decoded\n{src.codes.shape[1]} codes"
                    ax.set_ylabel(label, fontsize=8.5)
        ax.text(1.08, 0.5, f"K={src.vq.codebook_size}\nMSE\n{mse:.4f}", transform=ax.transAxes, fontsize=8, va="center")

    # 2. one utterance ------------------------------------------------------------------------------------------------
    if units_model is not None:
        text, audio, sr, cached = _utterance(dm)
        mel = log_mel(audio, sr, n_mels=units_model.n_mels)
        frames = units_model.encode_frames(audio, sr)
        merged = merge_repeats(frames)
        sub = fig.add_gridspec(3, 1, height_ratios=[2.2, 0.3, 0.75], hspace=0.3, **block(speech_h))
        t_end = len(mel) * 0.01
        ax = fig.add_subplot(sub[0])
        ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma", extent=(0, t_end, 0, mel.shape[1]))
        ax.set_ylabel("mel band", fontsize=9)
        ax.set_xticks([])
        same = ""
        if cached is not None:  # espeak varies by a few samples when it has already spoken in this process
            same = "; identical to the cached units" if np.array_equal(merged, cached) else (
                f"; the cached units ({len(cached)}) differ slightly: espeak varies within a process")  # fmt: skip
        ax.set_title(f"Speech, transcript: {text}   ({len(audio) / sr:.2f} s, {len(mel)} frames of 10 ms, "
                     f"{len(merged)} merged units{same})", fontsize=10)  # fmt: skip
        ax = fig.add_subplot(sub[1])
        ax.imshow(frames[None], aspect="auto", cmap=plt.get_cmap("turbo", units_model.n_units), vmin=0,
                  vmax=units_model.n_units - 1, extent=(0, t_end, 0, 1), interpolation="nearest")  # fmt: skip
        ax.set_yticks([0.5], [f"unit/frame\n(K={units_model.n_units})"], fontsize=8)
        ax.set_xlabel("time (s)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax = fig.add_subplot(sub[2])
        ax.axis("off")
        shown = " ".join(map(str, merged))
        ax.text(0, 0.8, "merged units (what the model reads):\n" + "\n".join(textwrap.wrap(shown, 170)),
                family="DejaVu Sans Mono", fontsize=8, va="top", ha="left", transform=ax.transAxes)  # fmt: skip

    # 3. decoded training sequences ---------------------------------------------------------------------------------
    for n, (i, items, h) in enumerate(zip(chosen, seq_items, seq_h, strict=True)):
        r = block(h)
        ax = fig.add_axes((r["left"], r["bottom"], r["right"] - r["left"], r["top"] - r["bottom"]))
        _draw_sequence(ax, items, vocab.speech_size)
        title = f"Training sequence {i} ({rows.shape[1]} ids), decoded"
        if n == 0:
            title += ("  —  text: one colour per BPE token; images: decoded VQ codes; speech: one colour cell per unit;"
                      " specials in green")  # fmt: skip
        ax.set_title(title, fontsize=9.5, loc="left")
        for spine in ax.spines.values():
            spine.set_color("#bbbbbb")

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=dpi)
    plt.close(fig)
    return out_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/data.png", help="PNG to write")
    discrete = [name for name, setting in SETTINGS.items() if not setting.continuous]
    parser.add_argument("--setting", default="three_modality", choices=discrete)
    parser.add_argument("--cache-dir", default=".cache/data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args(argv)

    from datamodules.multimodal import MultiModalDataModule

    start = time.perf_counter()
    dm = MultiModalDataModule(setting=args.setting, seq_len=args.seq_len, seed=args.seed, cache_dir=args.cache_dir)
    dm.prepare_data()
    dm.setup("fit")
    loaded = time.perf_counter()
    out = render_data_overview(dm, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB; data {loaded - start:.1f}s, "
          f"drawing {time.perf_counter() - loaded:.1f}s)")  # fmt: skip


if __name__ == "__main__":
    main()
