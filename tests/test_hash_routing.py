"""The position-hash control arms (mom_hash, mot_hash): the sparse arms' experts, chosen by position, not modality."""

import pytest
import torch

from models import ModalityLinear, ModelConfig, build_model, position_hash_ids
from tests.helpers import interleaved_ids

V, P = 64, 12
CONTROLS = {"mom_hash": "mom", "mot_hash": "mot"}


def small_cfg(arch: str, **overrides) -> ModelConfig:
    base = dict(vocab_size=V, n_modalities=2, d_model=32, n_layer=2, n_head=4, mlp_multiple_of=32, d_state=8)
    return ModelConfig(arch=arch, **{**base, **overrides})


def knuth_expert(position: int, n_experts: int) -> int:
    """Knuth's multiplicative hash in Python integers: floor(M · ((p · 2654435761) mod 2^32) / 2^32)."""
    return (position * 2654435761 % 2**32) * n_experts // 2**32


def batch(n_modalities: int, batch_size: int = 2, seqlen: int = 24, seed: int = 0, patches: bool = False) -> dict:
    ids = interleaved_ids(batch_size, seqlen, n_modalities, seed)
    g = torch.Generator().manual_seed(seed)
    out = dict(tokens=torch.randint(0, V, (batch_size, seqlen), generator=g), modality_ids=ids)
    if patches:
        out.update(
            patches=torch.randn(batch_size, seqlen, P, generator=g),
            patch_mask=ids == 1,
            timesteps=torch.randint(0, 1000, (batch_size, seqlen), generator=g),
        )
    return out


def test_position_hash_known_answer():
    """The first positions' experts are floor(M · frac(p / φ)) (hand-computed), for M = 2 and 3, in every row."""
    assert position_hash_ids(3, 10, 2).tolist() == [[0, 1, 0, 1, 0, 0, 1, 0, 1, 1]] * 3
    assert position_hash_ids(1, 10, 3).tolist() == [[0, 1, 0, 2, 1, 0, 2, 0, 2, 1]]
    assert position_hash_ids(2, 7, 1).eq(0).all()
    ids = position_hash_ids(2, 4096, 3)
    assert ids.dtype == torch.int64 and ids.shape == (2, 4096)
    assert ids[0].tolist() == [knuth_expert(p, 3) for p in range(4096)]


def test_position_hash_balanced_and_fixed():
    """Every expert gets 40-60% of 256 positions (M = 2; 25-42% for M = 3) and both experts appear in every window of 8
    positions; the assignment depends on the position alone (prefixes agree, repeated calls agree)."""
    for m, (lo, hi) in ((2, (0.4, 0.6)), (3, (0.25, 0.42))):
        share = torch.bincount(position_hash_ids(1, 256, m)[0], minlength=m) / 256
        assert ((share >= lo) & (share <= hi)).all(), share
    ids = position_hash_ids(1, 256, 2)[0]
    windows = ids.unfold(0, 8, 1)  # (249, 8)
    assert (windows.min(-1).values == 0).all() and (windows.max(-1).values == 1).all()
    assert torch.equal(position_hash_ids(4, 100, 2), position_hash_ids(4, 256, 2)[:, :100])
    assert torch.equal(position_hash_ids(4, 256, 2), ids.expand(4, 256))


@pytest.mark.parametrize("arch", CONTROLS)
def test_hash_arm_routes_by_position_not_modality(arch):
    """The model's expert choice is the position hash, the same on every call, whatever the tokens and modalities;
    mom / mot choose by modality instead."""
    model, by_modality = build_model(small_cfg(arch)), build_model(small_cfg(CONTROLS[arch]))
    b = batch(2)
    expected = torch.tensor([[knuth_expert(p, 2) for p in range(24)]] * 2)
    for tokens, ids in (
        (b["tokens"], b["modality_ids"]),
        (b["tokens"].flip(1), 1 - b["modality_ids"]),
        (b["tokens"], None),
    ):
        assert torch.equal(model.expert_ids(tokens, ids), expected)
    assert torch.equal(by_modality.expert_ids(b["tokens"], b["modality_ids"]), b["modality_ids"])


@pytest.mark.parametrize("arch", CONTROLS)
def test_hash_arm_output_does_not_depend_on_modality_ids(arch):
    """With distinct experts, changing or permuting the (valid) modality ids, or omitting them, leaves the hash arm's
    output unchanged, while the modality-routed arm with the same weights changes."""
    model = build_model(small_cfg(arch, n_modalities=3)).eval()
    by_modality = build_model(small_cfg(CONTROLS[arch], n_modalities=3)).eval()
    by_modality.load_state_dict(model.state_dict())
    b = batch(3)
    tokens, ids = b["tokens"], b["modality_ids"]
    others = [(ids + 1) % 3, ids[:, torch.randperm(ids.shape[1])], torch.zeros_like(ids), None]
    ref = model(tokens, ids).logits
    for other in others:
        torch.testing.assert_close(model(tokens, other).logits, ref, rtol=0, atol=0)
    mom_ref = by_modality(tokens, ids).logits
    for other in others[:3]:
        assert not torch.allclose(by_modality(tokens, other).logits, mom_ref)


@pytest.mark.parametrize("patches", [False, True], ids=["tokens", "transfusion"])
@pytest.mark.parametrize("arch", CONTROLS)
def test_hash_arm_equals_modality_arm_fed_hashed_ids(arch, patches):
    """With distinct experts, the hash arm equals the modality-routed arm (same weights) whose modality ids are
    replaced by the hand-computed per-position experts; patch layers still see the real patch mask."""
    m = 3
    model = build_model(small_cfg(arch, n_modalities=m, patch_dim=P)).eval()
    by_modality = build_model(small_cfg(CONTROLS[arch], n_modalities=m, patch_dim=P)).eval()
    by_modality.load_state_dict(model.state_dict())
    b = batch(m, patches=patches)
    hashed = torch.tensor([[knuth_expert(p, m) for p in range(b["tokens"].shape[1])]] * b["tokens"].shape[0])
    assert not torch.equal(hashed, b["modality_ids"])
    out, ref = model(**b), by_modality(**{**b, "modality_ids": hashed})
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=0)
    if patches:
        assert out.patch_pred.shape == (int(b["patch_mask"].sum()), P)
        torch.testing.assert_close(out.patch_pred, ref.patch_pred, rtol=0, atol=0)


@pytest.mark.parametrize("arch", CONTROLS)
def test_hash_arm_trains_every_expert_on_both_modalities(arch):
    """In a typical interleaved batch each expert of the hash arm gets tokens of both modalities, and a gradient."""
    model = build_model(small_cfg(arch))
    b = batch(2, seqlen=64)
    experts = model.expert_ids(b["tokens"], b["modality_ids"])
    for e in range(2):
        assert set(b["modality_ids"][experts == e].tolist()) == {0, 1}
    model(**b).logits.logsumexp(-1).mean().backward()
    experts = [m.weight for m in model.modules() if isinstance(m, ModalityLinear) and m.n_modalities == 2]
    assert experts and all(w.grad[e].abs().sum() > 0 for w in experts for e in range(2))


def test_hash_arm_still_validates_modality_ids():
    """The hash arm ignores modality ids for routing but still rejects invalid ones, like every arm."""
    model = build_model(small_cfg("mom_hash"))
    tokens = torch.randint(0, V, (2, 8))
    with pytest.raises(ValueError, match="modality id 2 is out of range"):
        model(tokens, torch.full_like(tokens, 2))
    with pytest.raises(ValueError, match=r"modality_ids shape \(2, 4\)"):
        model(tokens, torch.zeros(2, 4, dtype=torch.long))
