"""The joint vocabulary: text ids, image codes, speech units and special tokens in one id space.

Layout (every id belongs to exactly one modality):

    [0, n_special)                      special tokens (text modality, except <patch>, see below)
    [n_special, text_size)              byte-level BPE text tokens
    [text_size, text_size + image_size) image VQ codes (discrete settings; 0 codes for Transfusion)
    [.., .. + speech_size)              speech units (three-modality setting)

The BPE tokenizer is trained with the special tokens first, so a special token has the same id in the BPE
vocabulary and in the joint one. `<patch>` is the placeholder id at positions that carry a continuous image patch
(Transfusion): the model never reads its embedding there, and it is the one special that belongs to the image
modality, so that modality ids can always be read off token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEXT, IMAGE, SPEECH = 0, 1, 2
MODALITY_NAMES = ("text", "image", "speech")

# Order fixes the ids 0..6. <boi>/<eoi> wrap an image, <boa>/<eoa> an utterance (audio).
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>", "<patch>")
PAD, BOS, EOS, BOI, EOI, BOA, EOA, PATCH = range(len(SPECIAL_TOKENS))
IGNORE = -100  # target value of positions without a next-token loss (torch's cross_entropy ignore_index)


@dataclass(frozen=True)
class JointVocab:
    """Sizes of the joint vocabulary's ranges; see the module docstring for the layout."""

    text_size: int  # the BPE vocabulary, specials included
    image_size: int = 0
    speech_size: int = 0

    def __post_init__(self) -> None:
        if self.text_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"text_size {self.text_size} leaves no room beside {len(SPECIAL_TOKENS)} special tokens")
        if self.image_size < 0 or self.speech_size < 0:
            raise ValueError(f"image_size and speech_size must be >= 0, got {self.image_size}, {self.speech_size}")

    @property
    def image_offset(self) -> int:
        return self.text_size

    @property
    def speech_offset(self) -> int:
        return self.text_size + self.image_size

    @property
    def size(self) -> int:
        return self.text_size + self.image_size + self.speech_size

    def image_ids(self, codes: np.ndarray) -> np.ndarray:
        """VQ codes in [0, image_size) -> joint ids."""
        return self._shift(codes, self.image_offset, self.image_size, "image code")

    def speech_ids(self, units: np.ndarray) -> np.ndarray:
        """Speech units in [0, speech_size) -> joint ids."""
        return self._shift(units, self.speech_offset, self.speech_size, "speech unit")

    def image_codes(self, ids: np.ndarray) -> np.ndarray:
        """Joint ids of image codes -> VQ codes (inverse of image_ids)."""
        return np.asarray(ids, dtype=np.int64) - self.image_offset

    def speech_units(self, ids: np.ndarray) -> np.ndarray:
        """Joint ids of speech units -> units (inverse of speech_ids)."""
        return np.asarray(ids, dtype=np.int64) - self.speech_offset

    def modality_of(self, ids):
        """Modality id (0 text, 1 image, 2 speech) of every id; works on numpy arrays and torch tensors alike."""
        out = (ids >= self.image_offset) * 1 + (ids >= self.speech_offset) * 1
        return out + (ids == PATCH) * IMAGE

    @staticmethod
    def _shift(values: np.ndarray, offset: int, size: int, what: str) -> np.ndarray:
        values = np.asarray(values, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() >= size):
            raise ValueError(f"{what} out of range: got {values.min()}..{values.max()}, valid 0..{size - 1}")
        return values + offset
