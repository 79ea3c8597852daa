"""Batch items of packed sequences: what every model and loss of the suite reads.

A batch is a dict of tensors (B batch, L seq_len, P patch width):
    sequence (B, 2) int64          each sequence's key: (epoch, index into the packed sequences)
    tokens (B, L) int64            joint-vocabulary ids (<patch> at continuous-patch positions)
    modality_ids (B, L) int64      modality of each input position (0 text, 1 image, 2 speech)
    targets (B, L) int64           next-token id, or -100 where there is no next-token loss
    target_modality (B, L) int64   modality of the target, -1 where the target is -100
    image_source (B, L) int64      image source of each image position (codes or patches; an index into the
                                   datamodule's `image_sources`), -1 elsewhere
    target_image_source (B, L)     the same for each target (the image source of position t + 1)
  Transfusion only:
    patches (B, L, P) float32      noised patch x_t at patch positions (zeros elsewhere)
    noise (B, L, P) float32        the noise ε to predict at patch positions (zeros elsewhere)
    patch_mask (B, L) bool         positions that carry a patch
    timesteps (B, L) int64         the DDPM timestep of the position's image (0 elsewhere)

The diffusion noise of sequence i in epoch e is drawn from (seed, stream, e, i): the same seed gives every arm
byte-identical items.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.sequences import (
    PackedSequences,
    cosine_alpha_bar,
    diffusion_inputs,
    next_token_targets,
    target_modalities,
)
from datamodules.vocab import PATCH, JointVocab

DIFFUSION_STEPS = 1000


class SequenceDataset(Dataset):
    """Packed sequences -> batch items (see the module docstring). Items are addressed by their key (epoch, index)."""

    def __init__(self, packed: PackedSequences, vocab: JointVocab, seed: int, stream: int) -> None:
        self.packed, self.vocab, self.seed, self.stream = packed, vocab, seed, stream
        self.alpha_bar = cosine_alpha_bar(DIFFUSION_STEPS)

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, i = key
        ids = self.packed.ids[i]
        tokens = ids[:-1]
        targets = next_token_targets(ids)
        item = {
            "sequence": torch.tensor(key, dtype=torch.int64),  # (epoch, index): which sequence, for the order digest
            "tokens": torch.from_numpy(tokens.copy()),
            "modality_ids": torch.from_numpy(self.vocab.modality_of(tokens)),
            "targets": torch.from_numpy(targets),
            "target_modality": torch.from_numpy(target_modalities(targets, self.vocab)),
            # the image source (index into the datamodule's image_sources) of each input and target position
            "image_source": torch.from_numpy(self.packed.sources[i][:-1].astype(np.int64)),
            "target_image_source": torch.from_numpy(self.packed.sources[i][1:].astype(np.int64)),
        }
        if self.packed.patches is not None:
            p = self.packed
            clean = p.patches[p.patch_offsets[i] : p.patch_offsets[i + 1]]
            rng = np.random.default_rng((self.seed, self.stream, epoch, i))
            noised, noise, timesteps = diffusion_inputs(clean, p.image_index[i][:-1], self.alpha_bar, rng)
            mask = tokens == PATCH
            full = np.zeros((len(tokens), clean.shape[1]), np.float32)
            item["patches"], item["noise"] = torch.from_numpy(full.copy()), torch.from_numpy(full)
            item["patches"][mask], item["noise"][mask] = torch.from_numpy(noised), torch.from_numpy(noise)
            item["patch_mask"] = torch.from_numpy(mask)
            item["timesteps"] = torch.from_numpy(timesteps)
        return item
