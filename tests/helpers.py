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


# Real default sources, small enough that a cache builds in seconds: shared by the data and training tests.
SMALL_DATA = dict(
    seq_len=128,
    batch_size=4,
    text_vocab_size=1024,
    fashion_train_images=2000,
    speech_train_utterances=150,
    speech_val_utterances=30,
    val_sequences=8,
)
# A model small enough to train dozens of steps in a test.
TINY_MODEL = {"d_model": 32, "n_layer": 1, "n_head": 2, "mlp_multiple_of": 32, "d_state": 8}


def trained_folder(root, setting: str, variant: str, seed: int = 0, scale: str = "tiny"):
    """The one run folder of (setting, variant, seed) under `root`, whatever its recipe's name."""
    from pathlib import Path

    found = sorted(Path(root).glob(f"{setting}/{scale}/*/{variant}/seed{seed}"))
    assert len(found) == 1, f"expected one run folder of {setting}/{variant}/seed{seed} under {root}: {found}"
    return found[0]
