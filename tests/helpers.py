"""Test helpers shared by several test files."""

import torch


def interleaved_ids(batch: int, seqlen: int, n_modalities: int, seed: int = 0) -> torch.Tensor:
    """(B, L) modality ids in runs of random length, like interleaved documents, covering every modality."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.empty(batch, seqlen, dtype=torch.long)
    for b in range(batch):
        pos = 0
        while pos < seqlen:
            run = int(torch.randint(1, 8, (1,), generator=g))
            ids[b, pos : pos + run] = int(torch.randint(0, n_modalities, (1,), generator=g))
            pos += run
    ids[0, :n_modalities] = torch.arange(n_modalities)  # make sure every modality is present
    return ids
