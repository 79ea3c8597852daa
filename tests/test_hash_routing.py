"""The position-hash control arms (mom_hash, mot_hash): the sparse arms' experts, chosen by position, not modality."""

import pytest
import torch

from experiments.checkpoints import load_checkpoint
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


def test_token_hash_table_is_a_balanced_fixed_function_of_the_token_id():
    """Before balancing, the expert is Knuth's hash of the id; balanced on counts, the loads differ by at most the
    largest count (greedy over decreasing frequency), and every id keeps one expert."""
    from models.lm import balanced_token_table, token_hash_table

    assert token_hash_table(10, 3).tolist() == [knuth_expert(t, 3) for t in range(10)]
    counts = torch.tensor([1000, 10, 500, 0, 480, 30, 20, 3, 2, 1])
    table = balanced_token_table(counts, 2)
    loads = torch.bincount(table, weights=counts.double(), minlength=2)
    assert table.tolist()[:3] == [0, 1, 1] and abs(loads[0] - loads[1]) <= counts.max()
    assert loads.tolist() == [1023.0, 1023.0]


@pytest.mark.parametrize("arch", ["mom_idhash", "mot_idhash"])
def test_token_hash_arm_routes_by_token_id_not_position_or_modality(arch):
    """The same token id goes to the same expert wherever it is and whatever its modality; the balanced table is a
    buffer saved with the model; the arm costs exactly its sparse arm's parameters and FLOPs."""
    from analysis.flops import flops_per_token
    from models import param_count

    model = build_model(small_cfg(arch))
    counts = torch.arange(V).flip(0) ** 2
    model.balance_token_experts(counts)
    tokens = torch.randint(0, V, (3, 40))
    experts = model.expert_ids(tokens, interleaved_ids(3, 40, 2))
    assert torch.equal(experts, model.token_experts[tokens])
    assert torch.equal(model.expert_ids(tokens.flip(1), None), experts.flip(1))  # position and modality play no part
    assert "token_experts" in model.state_dict()
    sparse = arch.replace("_idhash", "")
    assert param_count(small_cfg(arch)) == param_count(small_cfg(sparse))
    assert flops_per_token(small_cfg(arch), 32) == flops_per_token(small_cfg(sparse), 32)
    with pytest.raises(ValueError, match="one per token id"):
        model.balance_token_experts(counts[:10])


def test_a_token_hash_run_balances_its_experts_on_its_training_data(tmp_path, small_cache):
    """train_run gives mom_idhash the table balanced on the run's own training tokens, and the checkpoint keeps it."""
    from datamodules.multimodal import MultiModalDataModule
    from experiments.recipes import RunRequest
    from experiments.run import train_run
    from models.lm import balanced_token_table
    from tests.helpers import SMALL_DATA, TINY_MODEL, trained_folder

    data = {**SMALL_DATA, "cache_dir": small_cache}
    train_run(RunRequest("chameleon", "mom_idhash", max_steps=2, val_every=2, root=tmp_path, data=data,
              module={"model_overrides": TINY_MODEL}))  # fmt: skip
    state = load_checkpoint(trained_folder(tmp_path, "chameleon", "mom_idhash") / "checkpoints/last.ckpt")
    dm = MultiModalDataModule(setting="chameleon", **data)
    dm.setup("fit")
    counts = dm.token_counts()
    table = state["state_dict"]["model.token_experts"]
    assert torch.equal(table, balanced_token_table(counts, 2))
    loads = torch.bincount(table, weights=counts.double(), minlength=2)
    assert abs(loads[0] - loads[1]) / loads.sum() < 0.05  # the padding id alone is a few percent of the inputs
