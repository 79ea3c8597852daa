"""Sample from a trained run: text continuations, and images from captions (VQ codes decoded through the run's
codebook, or Transfusion's continuous patches by DDIM sampling of its diffusion head).

    python experiments/sample.py runs/chameleon/tiny/200steps-efcc3e/mom/seed0 --prompt "It is a truth" \\
        --captions "a photo of a shirt" "a drawing of a sneaker" --temperature 0.8 --top-k 50 --seed 0

Writes into `--out` (default <run>/samples): text.txt (each prompt and its continuation), images.png (one image per
caption, the caption above it; settings with images only) and samples.json (the settings and the texts).
Generation runs through the model's cache (models.lm.InferenceCache): Mamba and MoM step their recurrence, the
transformers attend over cached keys and values, and every new token is routed by its own modality. At tiny scale
the samples are rough; they show that the pieces fit, not what the papers' models draw.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from analysis.run_record import CONFIG, RunRecordError, read_config
from common.files import atomic_write, write_json
from datamodules.multimodal import MultiModalDataModule
from datamodules.sequences import cosine_alpha_bar
from datamodules.vocab import BOI, BOS, EOS, IMAGE, PATCH, TEXT
from experiments.export import TRUST_HELP, ExportError, load_checkpoint_model
from models.lm import MultiModalLM


class SampleError(ValueError):
    """A request a run cannot serve; the message names the value and what is valid."""


@dataclass
class Sampler:
    """A run's model and data, and the sampling settings."""

    model: MultiModalLM
    dm: MultiModalDataModule
    temperature: float = 1.0
    top_k: int = 0  # 0: the whole vocabulary
    seed: int = 0

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)
        self.vocab, self.tokenizer = self.dm.vocab, self.dm.corpus.tokenizer
        # Transformers were trained on sequences of seq_len positions; a recurrent state has no such limit.
        self.max_positions = None if self.model.cfg.family.recurrent else self.dm.seq_len

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def _check_length(self, n: int, what: str) -> None:
        if self.max_positions is not None and n > self.max_positions:
            raise SampleError(
                f"{what} needs {n} positions; this run's {self.model.cfg.arch} was trained on sequences of "
                f"{self.max_positions}: ask for fewer tokens or a shorter prompt"
            )

    def _pick(self, logits: torch.Tensor, allowed: tuple[int, int] | None) -> int:
        """One token id from the last position's logits (1, V), within `allowed` = [lo, hi) when given."""
        logits = logits.float().clone()
        if allowed is not None:
            logits[:, : allowed[0]] = -math.inf
            logits[:, allowed[1] :] = -math.inf
        if self.temperature <= 0:
            return int(logits.argmax(-1))
        logits = logits / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator))

    @torch.no_grad()
    def _continue(self, ids: list[int], n: int, allowed=None, modality: int = TEXT, stop: int | None = None):
        """`ids` as the prompt, then up to n new ids (each routed as `modality`); the new ids."""
        cache = self.model.allocate_inference_cache(1, len(ids) + n)
        tokens = torch.tensor([ids])
        logits = self.model(tokens, torch.as_tensor(self.vocab.modality_of(tokens)), cache=cache).logits[:, -1]
        new = []
        for _ in range(n):
            token = self._pick(logits, allowed)
            if token == stop:
                break
            new.append(token)
            step = torch.tensor([[token]])
            logits = self.model(step, torch.full_like(step, modality), cache=cache).logits[:, -1]
        return new

    def text(self, prompt: str, max_new_tokens: int) -> str:
        ids = [BOS, *self.encode(prompt)]
        self._check_length(len(ids) + max_new_tokens, f"the prompt and {max_new_tokens} new tokens")
        return self.tokenizer.decode(self._continue(ids, max_new_tokens, stop=EOS))

    def image(self, caption: str, source: int = 0, diffusion_steps: int = 40) -> np.ndarray:
        """An image for `caption` from image source `source`: (H, W, C) floats in [0, 1]."""
        sources = self.dm.corpus.images
        if not sources:
            raise SampleError("this run's data has no images: ask for text only (--prompt, no --captions)")
        if not 0 <= source < len(sources):
            names = [s.name for s in sources]
            raise SampleError(f"--image-source {source} is not one of 0..{len(sources) - 1} ({', '.join(names)})")
        src = sources[source]
        ids = [BOS, *self.encode(caption), BOI]
        n = src.codes.shape[1]
        self._check_length(len(ids) + n, f"a caption and an image of {n} patches")
        if self.dm.continuous:
            return self._diffuse(ids, src, diffusion_steps)
        lo = self.vocab.image_offset + sum(s.vq.codebook_size for s in sources[:source])
        codes = np.array(self._continue(ids, n, allowed=(lo, lo + src.vq.codebook_size), modality=IMAGE)) - lo
        return np.clip(src.vq.decode(codes[None])[0], 0, 1)

    @torch.no_grad()
    def _diffuse(self, ids: list[int], src, steps: int) -> np.ndarray:
        """Transfusion: the image's patches by DDIM (eta 0) from pure noise, the diffusion head predicting the noise
        at every step with the caption before them (the whole sequence again each step: the patches attend to each
        other within the image)."""
        n, width = src.codes.shape[1], self.model.cfg.patch_dim
        tokens = torch.tensor([ids + [PATCH] * n])
        mask = tokens == PATCH
        modality = torch.as_tensor(self.vocab.modality_of(tokens))
        mean, std = (torch.as_tensor(v, dtype=torch.float32) for v in (src.normalizer.mean, src.normalizer.std))

        def predict_noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            patches = torch.zeros(1, tokens.shape[1], width)
            patches[mask] = x
            return self.model(tokens, modality, patches, mask, torch.where(mask, t, 0)).patch_pred.float()

        x = torch.randn(n, width, generator=self.generator)
        x = ddim_sample(predict_noise, x, steps, low=-mean / std, high=(1 - mean) / std)  # pixels in [0, 1]
        return np.clip(src.normalizer.decode(x[None].numpy())[0], 0, 1)


def ddim_sample(predict_noise, x: torch.Tensor, steps: int, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """DDIM (eta 0) from noise `x` to a clean sample over `steps` timesteps of the training schedule (cosine, 1000).

    Each step predicts the noise, forms the clean prediction, clips it to [low, high] (the data range: at the first
    steps alpha_bar is ~0 and the prediction is divided by its square root), and moves to the next timestep.
    """
    alpha_bar = torch.as_tensor(cosine_alpha_bar(), dtype=x.dtype)
    times = torch.linspace(len(alpha_bar) - 1, 0, steps).round().long()
    for i, t in enumerate(times):
        ab = alpha_bar[t]
        x0 = torch.maximum(torch.minimum((x - (1 - ab).sqrt() * predict_noise(x, t)) / ab.sqrt(), high), low)
        if i + 1 < len(times):
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()  # the noise consistent with the clipped prediction
            ab_next = alpha_bar[times[i + 1]]
            x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
    return x0


def load_sampler(run_dir: str | Path, trust: bool = False, **settings) -> Sampler:
    """The run's final checkpoint (checked and loaded as `load_checkpoint_model` does; `trust` as there) and its
    data (the prepared cache, built if missing) as a Sampler."""
    folder = Path(run_dir)
    try:
        model = load_checkpoint_model(folder, trust)
        config = read_config(folder)
    except (ExportError, RunRecordError) as exc:
        raise SampleError(str(exc)) from None
    if config is None:
        raise SampleError(f"{folder}: no {CONFIG}; not a run folder")
    data = {k: v for k, v in config["data"].items() if k not in ("setting", "seed")}
    dm = MultiModalDataModule(setting=config["setting"], seed=config["seed"], **data)
    dm.prepare_data()
    dm.setup("fit")
    return Sampler(model, dm, **settings)


def image_grid(images: list[np.ndarray], captions: list[str], scale: int = 4) -> Image.Image:
    """The images side by side, enlarged, each with its caption above it."""
    rgb = [np.repeat(im, 3, -1) if im.shape[-1] == 1 else im for im in images]
    tiles = [Image.fromarray((np.clip(im, 0, 1) * 255).astype(np.uint8)) for im in rgb]
    tiles = [t.resize((t.width * scale, t.height * scale), Image.NEAREST) for t in tiles]
    width, height, band = max(t.width for t in tiles), max(t.height for t in tiles), 24
    column = max(width, 8 * max(len(c) for c in captions) // 2)
    grid = Image.new("RGB", (column * len(tiles), height + band), "white")
    draw = ImageDraw.Draw(grid)
    for i, (tile, caption) in enumerate(zip(tiles, captions, strict=True)):
        draw.text((i * column + 4, 4), caption[: column // 6], fill="black")
        grid.paste(tile, (i * column + (column - tile.width) // 2, band))
    return grid


SAMPLES = "samples"  # a results folder's samples: <setting>.png and samples.json
REPORT_PROMPT = "It is a truth universally acknowledged"


@dataclass
class ReportSample:
    """What one run draws for the report: its continuation of `REPORT_PROMPT` and, where the setting has images, the
    captions it drew and a row of those images."""

    text: str
    captions: list[str]
    images: Image.Image | None


def draw_report_sample(folder: Path, seed: int = 0) -> ReportSample:
    """The report's samples from one run (temperature 0.8, top-k 50, one seed): the prompt continued, and an image
    drawn for each of the first validation images' own captions (one per image source). Every arm of a setting draws
    the same prompt and captions, each with a generator of its own, so the runs can be sampled in any order or
    process."""
    sampler = load_sampler(folder, temperature=0.8, top_k=50, seed=seed)
    captions = [sampler.tokenizer.decode(list(src.captions[int(np.flatnonzero(src.is_val)[0])]))
                for src in sampler.dm.corpus.images][:3]  # fmt: skip
    text = sampler.text(REPORT_PROMPT, 32)
    images = image_grid([sampler.image(c, k, 20) for k, c in enumerate(captions)], captions) if captions else None
    return ReportSample(text, captions, images)


def write_comparison_samples(out: Path, drawn: dict[tuple[str, str], ReportSample], seed: int = 0) -> Path | None:
    """Every setting's samples, drawn by each of its arms' runs ({(setting, arm): `draw_report_sample`}):
    <out>/samples/<setting>.png (a row per arm) and samples.json, for the report."""
    settings = {}
    for setting in dict.fromkeys(s for s, _ in drawn):
        samples = {arm: sample for (s, arm), sample in drawn.items() if s == setting}
        captions = next(iter(samples.values())).captions
        texts = {arm: sample.text for arm, sample in samples.items()}
        entry = {"prompt": REPORT_PROMPT, "captions": captions, "texts": texts, "grid": None}
        rows = [(arm, sample.images) for arm, sample in samples.items() if sample.images is not None]
        if rows:
            grid = _stack(rows)
            atomic_write(out / SAMPLES / f"{setting}.png", lambda tmp, grid=grid: grid.save(tmp, format="png"))
            entry["grid"] = f"{SAMPLES}/{setting}.png"
        settings[setting] = entry
    if not settings:
        return None
    record = {"seed": seed, "temperature": 0.8, "top_k": 50, "diffusion_steps": 20, "settings": settings}
    return write_json(out / SAMPLES / "samples.json", record)


def _stack(rows: list[tuple[str, Image.Image]]) -> Image.Image:
    """Labelled rows, one under the other."""
    label = 90
    width, height = label + max(r.width for _, r in rows), sum(r.height for _, r in rows)
    grid, y = Image.new("RGB", (width, height), "white"), 0
    draw = ImageDraw.Draw(grid)
    for name, row in rows:
        draw.text((4, y + row.height // 2), name, fill="black")
        grid.paste(row, (label, y))
        y += row.height
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sample.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a run folder (runs/<setting>/<scale>/<recipe>/<variant>/seed<k>)")
    parser.add_argument("--prompt", action="append", default=[], help="text to continue (repeatable)")
    parser.add_argument("--captions", nargs="*", default=[], help="captions to draw an image for")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=50, help="0: the whole vocabulary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-source", type=int, default=0, help="which image source (0: the first)")
    parser.add_argument("--diffusion-steps", type=int, default=40, help="DDIM steps (Transfusion)")
    parser.add_argument("--out", help="output folder (default <run>/samples)")
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    args = parser.parse_args(argv)
    for flag, value, low in (("--max-new-tokens", args.max_new_tokens, 1), ("--top-k", args.top_k, 0),
                             ("--diffusion-steps", args.diffusion_steps, 1)):  # fmt: skip
        if value < low:
            parser.error(f"{flag} must be >= {low}; got {value}")
    if not args.prompt and not args.captions:
        args.prompt = [REPORT_PROMPT]
    try:
        sampler = load_sampler(args.run, args.trust_checkpoint, temperature=args.temperature, top_k=args.top_k,
                               seed=args.seed)  # fmt: skip
        texts = {prompt: sampler.text(prompt, args.max_new_tokens) for prompt in args.prompt}
        images = [sampler.image(c, args.image_source, args.diffusion_steps) for c in args.captions]
    except SampleError as exc:
        parser.error(str(exc))
    out = Path(args.out or Path(args.run) / "samples")
    atomic_write(out / "text.txt", "".join(f"prompt: {p}\nsample: {t}\n\n" for p, t in texts.items()))
    if images:
        atomic_write(out / "images.png", lambda tmp: image_grid(images, args.captions).save(tmp, format="png"))
    settings = {k: getattr(args, k) for k in ("temperature", "top_k", "seed", "max_new_tokens", "image_source")}
    write_json(out / "samples.json", {"run": str(args.run), "settings": settings, "texts": texts,
                                      "captions": args.captions})  # fmt: skip
    print(f"sample.py: wrote {out}")
    for prompt, text in texts.items():
        print(f"  {prompt} -> {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
