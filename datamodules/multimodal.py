"""`MultiModalDataModule`: the Transfusion, Chameleon and three-modality settings, served identically to every arm.

    dm = MultiModalDataModule(setting="chameleon", seq_len=256, batch_size=8, seed=0)
    dm.prepare_data(); dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))

A batch is a dict of tensors, laid out in datamodules/batches.py.

Determinism: the order of training sequences in epoch e and the diffusion noise of sequence i in epoch e are drawn
from (seed, e) and (seed, e, i): the same seed gives every arm byte-identical batches in the same order. Validation
uses a fixed set of sequences with fixed timesteps and noise.
"""

from __future__ import annotations

import itertools
from dataclasses import fields

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from datamodules.batches import SequenceDataset
from datamodules.corpus import Corpus, load_corpus
from datamodules.errors import DataMismatch
from datamodules.own import data_name
from datamodules.prepare import PrepareParams, as_rgb, image_text_params, prepare_corpus
from datamodules.samplers import DataPosition, EpochSampler, GlobalBatchShard, order_digest
from datamodules.sequences import Document, PackedSequences, pack_documents, paired_document, text_document
from datamodules.settings import Setting, get_setting
from datamodules.vocab import BOA, BOI, EOA, EOI, MODALITY_NAMES, PATCH, JointVocab

VAL_IMAGES_PER_SOURCE = 300
# Transfusion's normalised training patches by (corpus folder, image source): the same for every seed and arm, so a
# process that trains several runs (a comparison's worker) encodes them once, not once a run.
_TRAIN_PATCHES: dict[tuple[str, int], np.ndarray] = {}


class MultiModalDataModule(L.LightningDataModule):
    """One datamodule for every setting (datamodules/settings.py; docs/design.md, "Settings").

    Args:
        setting: a registered setting: "transfusion", "chameleon" or "three_modality".
        seq_len: positions per sequence (an image or utterance must fit in one, with its markers).
        batch_size: sequences per batch.
        seed: fixes document order, caption-first draws, epoch order and diffusion noise (the run's seed).
        val_sequences: validation sequences per validation set (fixed).
        text_ratio: text-only tokens per token of paired documents in the training stream (balance of modalities).
        caption_first: probability that a caption precedes its image.
        cache_dir: root of the prepared-data cache.
        text_vocab_size, image_patch, image_codebook, fashion_train_images, emoji, speech_units,
            speech_train_utterances, speech_val_utterances, own_data, prefer_debian: see `PrepareParams`.
        data_seed: seed of the tokenizers' fitting (VQ, speech-unit k-means). Kept apart from `seed` so that
            runs with several seeds share one prepared corpus and differ only in order, noise and initialisation.
    The defaults of seq_len, batch_size and val_sequences are the tiny recipe's (experiments/recipes.py).
    """

    def __init__(
        self,
        setting: str = "chameleon",
        seq_len: int = 256,
        batch_size: int = 4,
        seed: int = 0,
        val_sequences: int = 32,
        text_ratio: float = 1.0,
        caption_first: float = 0.8,
        cache_dir: str = ".cache/data",
        text_vocab_size: int = 2048,
        image_patch: int = 4,
        image_codebook: int = 256,
        fashion_train_images: int = 10000,
        emoji: bool = True,
        speech_units: int = 64,
        speech_train_utterances: int = 1500,
        speech_val_utterances: int = 200,
        own_data: str | None = None,
        prefer_debian: bool = True,
        data_seed: int = 0,
    ) -> None:
        super().__init__()
        self.spec: Setting = get_setting(setting)
        if seq_len < 2 or batch_size < 1 or val_sequences < 1:
            raise ValueError(
                f"need seq_len >= 2, batch_size >= 1, val_sequences >= 1; got {seq_len}, {batch_size}, {val_sequences}"
            )
        self.save_hyperparameters()
        self.setting, self.seq_len, self.batch_size, self.seed = setting, seq_len, batch_size, seed
        self.val_sequences, self.text_ratio = val_sequences, text_ratio
        self.caption_first, self.cache_dir = caption_first, cache_dir
        # The preparation's parameters are the arguments of the same name, but for its seed: data_seed, not seed.
        prepared = ({f.name for f in fields(PrepareParams)} & self.hparams.keys()) - {"seed"}
        self.params = PrepareParams(seed=data_seed, **{name: self.hparams[name] for name in prepared})
        if not self.spec.speech:  # speech is only built when it is used
            self.params = image_text_params(self.params)
        self.corpus: Corpus | None = None

    # -- Lightning hooks ------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Build the cached corpus once (tokenizers, codebooks, encoded sources) and print its dataset card."""
        prepare_corpus(self.params, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is not None:
            return
        self.corpus_folder = prepare_corpus(self.params, self.cache_dir, verbose=False)
        self.corpus = load_corpus(self.corpus_folder)
        c = self.corpus
        if self.spec.speech and c.speech_train is None:
            raise DataMismatch(
                f"setting {self.setting} needs speech, and {data_name(self.params.own_data)} has none (add "
                'documents with "audio", or choose a setting without speech)'
            )
        self.vocab = JointVocab(
            text_size=c.tokenizer.get_vocab_size(),
            image_size=0 if self.continuous else sum(s.vq.codebook_size for s in c.images),
            speech_size=self.params.speech_units if self.spec.speech else 0,
        )
        self.notes: list[str] = []  # what the assembly left out of the data, in words (see `_dataset`)
        self.train_set = self._dataset("train", stream=0)
        self.val_sets = {"val": self._dataset("val", stream=1)}
        if self.spec.speech and c.speech_real_val is not None:
            self.val_sets["val_real_speech"] = self._dataset("real_speech", stream=2)
        self.sources = c.card["sources"]
        for note in self.notes:
            rank_zero_info(f"{self.setting}: {note}")

    def train_position(self, steps: int, world: int = 1) -> DataPosition:
        """Where the training order stands after `steps` optimizer steps of world x batch_size sequences: a function
        of the step alone, so a resumed run reads on exactly where the uninterrupted run reads."""
        batch = self.batch_size * world
        epoch, done = divmod(steps, len(self.train_set) // batch)
        order = EpochSampler(len(self.train_set), self.seed, shuffle=True, epoch=epoch, skip=done * batch)
        return DataPosition(epoch, done * batch, order_digest(list(itertools.islice(order, batch))))

    def train_dataloader(self) -> DataLoader:
        """batch_size sequences per device and step: under DDP a step's global batch is world_size x batch_size."""
        position, rank, world = self.train_position(0), 0, 1
        if self.trainer is not None:  # resuming: Lightning has restored the step counter before asking for data
            rank, world = self.trainer.global_rank, self.trainer.world_size
            position = self.train_position(self.trainer.global_step, world)
        sampler = EpochSampler(len(self.train_set), self.seed, shuffle=True, epoch=position.epoch,
                               skip=position.position)  # fmt: skip
        if world > 1:
            sampler = GlobalBatchShard(sampler, self.batch_size, rank, world)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> list[DataLoader]:
        """Fixed order. Under DDP Lightning deals the sequences round-robin to the ranks; with val_sequences not a
        multiple of the number of devices its DistributedSampler repeats a few to even the ranks out."""
        return [
            DataLoader(ds, batch_size=self.batch_size, sampler=EpochSampler(len(ds), self.seed, shuffle=False))
            for ds in self.val_sets.values()
        ]

    # -- what models need to know ---------------------------------------------------------------------------------

    @property
    def continuous(self) -> bool:
        return self.spec.continuous

    @property
    def image_sources(self) -> tuple[str, ...]:
        """The image sources' names; a batch's `image_source` ids index into it."""
        return tuple(src.name for src in self.corpus.images)

    @property
    def vocab_size(self) -> int:
        return self.vocab.size

    @property
    def n_modalities(self) -> int:
        return self.spec.n_modalities

    @property
    def patch_dim(self) -> int:
        """Continuous patch width (Transfusion; RGB patches), 0 for the discrete settings."""
        return 3 * self.params.image_patch**2 if self.continuous else 0

    # -- assembling a setting -------------------------------------------------------------------------------------

    def _dataset(self, split: str, stream: int) -> SequenceDataset:
        rng = np.random.default_rng((self.seed, stream))
        docs = self._paired_documents(split, rng)
        if split != "real_speech":
            paired_tokens = sum(len(d.ids) for d in docs)
            text = self._text_documents(split, paired_tokens, rng)
            text_tokens = sum(len(d.ids) for d in text)
            if text_tokens < self.text_ratio * paired_tokens:  # text ran out first: thin the paired documents instead
                keep = rng.permutation(len(docs))[
                    : max(1, int(len(docs) * text_tokens / (self.text_ratio * paired_tokens)))
                ]
                self.notes.append(
                    f"{split}: text_ratio={self.text_ratio} kept {len(keep):,} of {len(docs):,} paired documents "
                    f"(the text-only documents hold {text_tokens:,} tokens)"
                )
                docs = [docs[i] for i in sorted(keep)]
            docs += text
        order = rng.permutation(len(docs))
        packed = pack_documents([docs[i] for i in order], self.seq_len)
        if split != "train":
            if len(packed) < self.val_sequences:
                self.notes.append(
                    f"{split}: {len(packed)} validation sequences of the {self.val_sequences} requested (its "
                    "documents fill no more)"
                )
            packed = _first(packed, self.val_sequences)
        need = self.batch_size if split == "train" else 1  # a whole batch; validation takes what there is
        if len(packed) < need:
            fix = (
                f"lower batch_size (to at most {len(packed)}) or seq_len (shorter sequences are more), or add documents"
                if split == "train"
                else "add validation documents, or raise seq_len (utterances longer than it are left out)"
            )
            raise DataMismatch(
                f"{self.setting}/{split}: {data_name(self.params.own_data)} fills {len(packed)} of the {need} "
                f"sequences of seq_len={self.seq_len} that {split} needs (batch_size={self.batch_size} to train, 1 to "
                f"validate): {fix}"
            )
        return SequenceDataset(packed, self.vocab, self.seed, stream)

    def _text_documents(self, split: str, paired_tokens: int, rng: np.random.Generator) -> list[Document]:
        texts = self.corpus.text_train if split == "train" else self.corpus.text_val
        budget = self.text_ratio * paired_tokens if paired_tokens else float("inf")
        docs, used = [], 0
        for i in rng.permutation(len(texts)):
            if used >= budget:
                total = sum(len(t) + 2 for t in texts)
                self.notes.append(
                    f"{split}: text_ratio={self.text_ratio} (text-only tokens per paired token) used {used:,} of the "
                    f"{total:,} text-only tokens"
                )
                break
            docs.append(text_document(texts[i]))
            used += len(texts[i]) + 2
        return docs

    def _paired_documents(self, split: str, rng: np.random.Generator) -> list[Document]:
        c, docs = self.corpus, []
        if split != "real_speech":
            offset = self.vocab.image_offset
            for k, src in enumerate(c.images):
                keep = np.flatnonzero(src.is_val == (split != "train"))
                if split != "train":  # a fixed, small image share, so speech and text keep a real share of val
                    keep = keep[np.random.default_rng(self.seed).permutation(len(keep))[:VAL_IMAGES_PER_SOURCE]]
                block_len = src.codes.shape[1] + 2
                if block_len > self.seq_len + 1:
                    raise DataMismatch(
                        f"seq_len={self.seq_len} is too short to hold one {src.name} image: it needs "
                        f"{block_len} positions with its markers"
                    )
                patches = self._patches(k, keep, split) if self.continuous else None
                for j, i in enumerate(keep):
                    text_first = bool(rng.random() < self.caption_first)
                    if self.continuous:
                        block, image = np.full(src.codes.shape[1], PATCH), patches[j]
                    else:
                        block, image = src.codes[i] + offset, None
                    docs.append(paired_document(src.captions[i], block, BOI, EOI, text_first, image, source=k))
                if not self.continuous:
                    offset += src.vq.codebook_size
        if self.spec.speech:
            speech = {"train": c.speech_train, "val": c.speech_val, "real_speech": c.speech_real_val}[split]
            long = 0
            for i in range(len(speech.units)):
                units = speech.units[i]
                if len(units) + 2 > self.seq_len + 1:
                    long += 1  # an utterance longer than a sequence cannot be kept whole
                    continue
                text_first = bool(rng.random() < 0.5)
                docs.append(paired_document(speech.transcripts[i], self.vocab.speech_ids(units), BOA, EOA, text_first))
            if long:
                self.notes.append(
                    f"{split}: {long:,} of {len(speech.units):,} utterances are longer than seq_len={self.seq_len} "
                    "with their markers and were left out"
                )
        return docs

    def _patches(self, k: int, keep: np.ndarray, split: str) -> np.ndarray:
        """The normalised patches of image source k's images `keep` (N, n, P); the training split's are cached."""
        key = (str(self.corpus_folder), k)
        if split == "train" and key in _TRAIN_PATCHES:
            return _TRAIN_PATCHES[key]
        src = self.corpus.images[k]
        patches = src.normalizer.encode(as_rgb(src.images[keep].astype(np.float32) / 255.0))
        if split == "train":
            if len(_TRAIN_PATCHES) >= 8:  # another corpus (own data): keep the memory of a few
                _TRAIN_PATCHES.clear()
            patches.setflags(write=False)  # shared by every later run of this process
            _TRAIN_PATCHES[key] = patches
        return patches

    def token_counts(self) -> torch.Tensor:
        """(vocab_size,) how often each id is an input position of the training set (the token-hash arms' loads)."""
        inputs = torch.from_numpy(self.train_set.packed.ids[:, :-1].ravel())
        return torch.bincount(inputs, minlength=self.vocab_size)

    def stats(self) -> dict:
        """Tokens per modality in the packed train and validation sets, and image tokens per image source."""
        out = {}
        for name, ds in {"train": self.train_set, **self.val_sets}.items():
            ids = ds.packed.ids
            real = ids[ids != 0]
            counts = np.bincount(self.vocab.modality_of(real), minlength=3)
            out[name] = {"sequences": len(ids), **{m: int(n) for m, n in zip(MODALITY_NAMES, counts, strict=True)}}
            sources = np.bincount(ds.packed.sources[ds.packed.sources >= 0], minlength=len(self.image_sources))
            out[name]["image_sources"] = dict(zip(self.image_sources, map(int, sources), strict=True))
        return out


def _first(packed: PackedSequences, n: int) -> PackedSequences:
    """The first n sequences (validation uses a fixed, small set)."""
    if packed.patches is None:
        return PackedSequences(packed.ids[:n], sources=packed.sources[:n])
    end = packed.patch_offsets[min(n, len(packed))]
    patches, offsets, index = packed.patches[:end], packed.patch_offsets[: n + 1], packed.image_index[:n]
    return PackedSequences(packed.ids[:n], patches, offsets, index, packed.sources[:n])
