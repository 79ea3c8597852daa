"""Joint vocabulary, document packing, next-token targets and the diffusion inputs (known-answer cases)."""

import numpy as np
import pytest

from datamodules.sequences import (
    cosine_alpha_bar,
    diffusion_inputs,
    next_token_targets,
    pack_documents,
    paired_document,
    target_modalities,
    text_document,
)
from datamodules.vocab import BOA, BOI, EOA, EOI, IGNORE, PAD, PATCH, SPECIAL_TOKENS, JointVocab

VOCAB = JointVocab(text_size=100, image_size=16, speech_size=8)


def test_every_id_maps_to_one_modality():
    """Specials and BPE ids are text (except <patch>, image), then image codes, then speech units."""
    ids = np.arange(VOCAB.size)
    modality = VOCAB.modality_of(ids)
    assert (modality[: len(SPECIAL_TOKENS)] == [0, 0, 0, 0, 0, 0, 0, 1]).all()
    assert (modality[len(SPECIAL_TOKENS) : 100] == 0).all()
    assert (modality[100:116] == 1).all() and (modality[116:] == 2).all()
    assert (VOCAB.image_codes(VOCAB.image_ids(np.arange(16))) == np.arange(16)).all()
    assert (VOCAB.speech_units(VOCAB.speech_ids(np.arange(8))) == np.arange(8)).all()
    with pytest.raises(ValueError, match=r"image code out of range: got 0\.\.16, valid 0\.\.15"):
        VOCAB.image_ids(np.arange(17))


def _docs(rng: np.random.Generator) -> list:
    docs = []
    for i in range(40):
        text = rng.integers(10, 100, size=rng.integers(3, 30))
        if i % 3 == 0:
            docs.append(text_document(text))
        elif i % 3 == 1:
            docs.append(paired_document(text, VOCAB.image_ids(rng.integers(0, 16, 9)), BOI, EOI, bool(i % 2)))
        else:
            docs.append(paired_document(text, VOCAB.speech_ids(rng.integers(0, 8, 12)), BOA, EOA, bool(i % 4)))
    return docs


def test_packing_keeps_every_id_in_order_and_never_splits_an_image_or_utterance():
    """Unpadded sequences concatenate back to the documents; every <boi>..<eoi> / <boa>..<eoa> lies in one row."""
    docs = _docs(np.random.default_rng(0))
    packed = pack_documents(docs, seq_len=31)
    assert packed.ids.shape[1] == 32
    stream = np.concatenate([row[row != PAD] for row in packed.ids])
    assert (stream == np.concatenate([d.ids for d in docs])).all()
    for row in packed.ids:
        for open_id, close_id in ((BOI, EOI), (BOA, EOA)):
            opens, closes = np.flatnonzero(row == open_id), np.flatnonzero(row == close_id)
            assert len(opens) == len(closes) and (opens < closes).all()


def test_packing_rejects_a_sequence_too_short_for_an_image():
    """An image longer than seq_len + 1 (with its markers) fails with a message saying what to change."""
    doc = paired_document(np.array([20, 21]), VOCAB.image_ids(np.zeros(49, int)), BOI, EOI, True)
    with pytest.raises(ValueError, match=r"seq_len=32 is too short: an image or utterance needs 51 positions"):
        pack_documents([doc], seq_len=32)


def test_targets_are_next_tokens_and_skip_padding_and_patches():
    """Position t targets id t+1; padding and continuous-patch positions carry no next-token target."""
    ids = np.array([[1, 20, 21, BOI, PATCH, PATCH, EOI, 2, PAD, PAD]])
    targets = next_token_targets(ids)
    assert targets.tolist() == [[20, 21, BOI, IGNORE, IGNORE, EOI, 2, IGNORE, IGNORE]]
    assert target_modalities(targets, VOCAB).tolist() == [[0, 0, 0, -1, -1, 0, 0, -1, -1]]


def test_continuous_packing_carries_patches_with_their_positions():
    """Each sequence holds exactly the patches of its <patch> positions, in order, with one image index each."""
    rng = np.random.default_rng(1)
    docs = [
        paired_document(rng.integers(10, 100, 5), np.full(4, PATCH), BOI, EOI, i % 2 == 0, patches=rng.random((4, 3)))
        for i in range(9)
    ]
    packed = pack_documents(docs, seq_len=15)
    all_patches = np.concatenate([d.patches for d in docs]).astype(np.float32)
    assert np.array_equal(packed.patches, all_patches)
    for i, row in enumerate(packed.ids):
        n = packed.patch_offsets[i + 1] - packed.patch_offsets[i]
        assert n == (row == PATCH).sum()
        idx = packed.image_index[i][row == PATCH]
        assert (idx == np.repeat(np.arange(n // 4), 4)).all()


def test_cosine_schedule_and_noising():
    """ᾱ decreases from ~1 to ~0; noised = sqrt(ᾱ) x0 + sqrt(1-ᾱ) ε with one timestep shared by an image's patches."""
    ab = cosine_alpha_bar(1000)
    assert ab.shape == (1000,) and ab[0] > 0.999 and ab[-1] < 1e-4 and (np.diff(ab) < 0).all()
    image_index = np.array([-1, 0, 0, 0, -1, 1, 1, -1])
    x0 = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    noised, noise, t = diffusion_inputs(x0, image_index, ab, np.random.default_rng(7))
    assert t[0] == t[4] == t[7] == 0 and len(set(t[1:4])) == 1 and len(set(t[5:7])) == 1
    t_patch = t[image_index >= 0]
    expect = np.sqrt(ab[t_patch])[:, None] * x0 + np.sqrt(1 - ab[t_patch])[:, None] * noise
    np.testing.assert_allclose(noised, expect, rtol=1e-5, atol=1e-6)
    again = diffusion_inputs(x0, image_index, ab, np.random.default_rng(7))
    assert all(np.array_equal(a, b) for a, b in zip((noised, noise, t), again, strict=True))
