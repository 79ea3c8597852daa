"""MultiModalLM and ModelConfig: every arm end to end, equivalences, causality, parameter counts, bad input."""

import pytest
import torch

from models import (
    ARMS,
    SCALES,
    ModelConfig,
    build_model,
    expert_state_dict,
    param_count,
    upcycle_state_dict,
)
from tests.helpers import interleaved_ids

V, P = 64, 12
ARCHS = list(ARMS)
SPARSE = [arch for arch in ARMS if ARMS[arch].is_sparse]  # mom, mot, mom_hash, mot_hash
BY_MODALITY = [arch for arch in SPARSE if ARMS[arch].routing == "modality"]  # mom, mot


def small_cfg(arch: str, **overrides) -> ModelConfig:
    base = dict(vocab_size=V, n_modalities=3, d_model=32, n_layer=2, n_head=4, mlp_multiple_of=32, d_state=8)
    return ModelConfig(arch=arch, **{**base, **overrides})


def transfusion_batch(batch: int = 2, seqlen: int = 20, seed: int = 0) -> dict:
    ids = interleaved_ids(batch, seqlen, 2, seed)
    g = torch.Generator().manual_seed(seed)
    return dict(
        tokens=torch.randint(0, V, (batch, seqlen), generator=g),
        modality_ids=ids,
        patches=torch.randn(batch, seqlen, P, generator=g),
        patch_mask=ids == 1,
        timesteps=torch.randint(0, 1000, (batch, seqlen), generator=g),
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_runs_discrete_and_continuous(arch):
    """Every arm returns (B, L, V) logits, and with patches one noise prediction per patch position; grads flow."""
    model = build_model(small_cfg(arch, patch_dim=P))
    tokens = torch.randint(0, V, (2, 20))
    out = model(tokens, interleaved_ids(2, 20, 3))
    assert out.logits.shape == (2, 20, V) and out.patch_pred is None
    batch = transfusion_batch()
    out = model(**batch)
    n_patch = int(batch["patch_mask"].sum())
    assert out.patch_pred.shape == (n_patch, P)
    (out.logits.logsumexp(-1).mean() + out.patch_pred.square().mean()).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_causal(arch):
    """Changing the token (or patch) at position t+1 leaves logits and patch predictions at <= t unchanged."""
    model = build_model(small_cfg(arch, patch_dim=P, n_modalities=2)).eval()
    batch = transfusion_batch(1, 24, seed=1)
    t = 11
    out = model(**batch)
    for field in ("tokens", "patches"):
        changed = {k: v.clone() for k, v in batch.items()}
        if field == "tokens":
            changed["tokens"][0, t + 1] = (changed["tokens"][0, t + 1] + 1) % V
            changed["patch_mask"][0, t + 1] = False  # make the position a token
        else:
            changed["patch_mask"][0, t + 1] = True
            changed["patches"][0, t + 1] += 1.0
        out2 = model(**changed)
        torch.testing.assert_close(out2.logits[:, : t + 1], out.logits[:, : t + 1], rtol=0, atol=0)
        before = int(batch["patch_mask"][0, : t + 1].sum())
        torch.testing.assert_close(out2.patch_pred[:before], out.patch_pred[:before], rtol=0, atol=0)
        assert not torch.allclose(out2.logits[:, t + 1 :], out.logits[:, t + 1 :])


@pytest.mark.parametrize("arch", SPARSE)
def test_sparse_model_with_identical_experts_equals_dense(arch):
    """Copying the dense model into every expert reproduces the dense model's outputs (tokens and patches), whatever
    picks the experts (modality or position hash)."""
    dense = build_model(small_cfg(ARMS[arch].dense, patch_dim=P, n_modalities=2))
    sparse = build_model(small_cfg(arch, patch_dim=P, n_modalities=2))
    sparse.load_state_dict(upcycle_state_dict(sparse, dense.state_dict()))
    batch = transfusion_batch()
    out, ref = sparse(**batch), dense(**batch)
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.patch_pred, ref.patch_pred)


@pytest.mark.parametrize("arch", BY_MODALITY)
def test_sparse_model_fed_one_modality_equals_dense_expert(arch):
    """A sparse model fed only modality k equals the dense model holding expert k."""
    sparse = build_model(small_cfg(arch))
    dense = build_model(small_cfg(ARMS[arch].dense))
    tokens = torch.randint(0, V, (2, 15))
    for k in range(3):
        dense.load_state_dict(expert_state_dict(sparse, k))
        torch.testing.assert_close(sparse(tokens, torch.full_like(tokens, k)).logits, dense(tokens).logits)


def test_dense_arms_ignore_modality_ids():
    """Dense arms give the same output whatever the (valid) modality ids."""
    for arch in ("mamba", "transformer"):
        model = build_model(small_cfg(arch))
        tokens = torch.randint(0, V, (1, 10))
        torch.testing.assert_close(model(tokens, interleaved_ids(1, 10, 3)).logits, model(tokens).logits)


CONFIGS = [
    small_cfg(arch, **extra)
    for arch in ARCHS
    for extra in ({}, {"patch_dim": P}, {"n_modalities": 2, "bias": True, "dt_rank": 3, "conv_bias": False})
] + [
    small_cfg("mom", decouple=("in_proj", "out_proj")),
    small_cfg("mot", decouple=("mlp", "norm")),
    small_cfg("mom_hash", decouple=("x_proj",)),
    small_cfg("mot_hash", decouple=("wq", "norm")),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.arch}-{c.patch_dim}-{c.n_modalities}-{len(c.decouple)}")
def test_analytic_param_count_equals_modules(cfg):
    """The analytic formula equals sum(p.numel()) and the modules' own active count."""
    assert build_model(cfg).param_count() == param_count(cfg)


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("arch", ARCHS)
def test_named_scales_param_counts_on_meta(scale, arch):
    """Every named scale builds on the meta device; analytic == modules; sparse active == dense total."""
    cfg = ModelConfig.from_scale(scale, arch=arch, n_modalities=3)
    model = build_model(cfg, device="meta")
    assert next(model.parameters()).is_meta
    counts = model.param_count()
    assert counts == param_count(cfg)
    assert counts.active == param_count(cfg.dense()).total
    if cfg.is_sparse:
        assert counts.total > counts.active


@pytest.mark.parametrize("scale", ["163m", "760m", "1.4b"])
@pytest.mark.parametrize("arch", ["mamba", "transformer"])
def test_paper_scales_match_their_names(scale, arch):
    """Dense 163m / 760m / 1.4b are within 3% of their names (32k Transfusion vocabulary, counted on meta)."""
    named = {"163m": 163e6, "760m": 760e6, "1.4b": 1.4e9}[scale]
    total = build_model(ModelConfig.from_scale(scale, arch=arch), device="meta").param_count().total
    assert abs(total / named - 1) <= 0.03, f"{arch} {scale}: {total / 1e6:.1f}M"


def test_config_round_trip_and_defaults():
    """to_dict() round-trips and records the routing; sparse arms decouple every part by default, dense arms none;
    the hash controls are their family's sparse arm with position-hash routing."""
    for arch in ARCHS:
        cfg = ModelConfig.from_scale("tiny", arch=arch, vocab_size=100)
        assert ModelConfig(**cfg.to_dict()) == cfg
        assert cfg.to_dict()["routing"] == cfg.routing == ARMS[arch].routing
        assert cfg.dense().arch == (ARMS[arch].dense or arch) and cfg.dense().routing == "none"
    assert ModelConfig(arch="mom").decouple == ModelConfig(arch="mom_hash").decouple
    assert ModelConfig(arch="mom").decouple == ("in_proj", "x_proj", "dt_proj", "out_proj")
    assert ModelConfig(arch="mot").decouple == ModelConfig(arch="mot_hash").decouple
    assert ModelConfig(arch="mot").decouple == ("wq", "wk", "wv", "wo", "mlp", "norm")
    assert ModelConfig(arch="mamba").decouple == ()
    assert [ModelConfig(arch=a).routing for a in ("mamba", "mom", "mom_hash")] == ["none", "modality", "position_hash"]
    assert ModelConfig(arch="mom_hash").is_sparse and ModelConfig(arch="mot_hash").family.name == "transformer"
    assert ModelConfig.from_scale("tiny", arch="mom").n_block == 4
    assert ModelConfig.from_scale("tiny", arch="mot").n_block == 2


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: ModelConfig(arch="rwkv"), ValueError, r"unknown arm 'rwkv'.*'mamba', 'mom', .*'transformer', 'mot'"),
        (lambda: ModelConfig(arch="mom", routing="position_hash"), ValueError, r"routes by 'modality'.*'mom_hash"),
        (lambda: ModelConfig(arch="mamba", routing="modality"), ValueError, r"'mamba' routes by 'none'"),
        (lambda: ModelConfig.from_scale("7b"), ValueError, r"unknown scale '7b'.*'tiny'"),
        (lambda: ModelConfig(arch="mom", decouple=("in_proj", "gate")), ValueError, r"\['gate'\].*'x_proj'"),
        (lambda: ModelConfig(arch="mamba", decouple=("in_proj",)), ValueError, r"dense and cannot decouple"),
        (lambda: ModelConfig(arch="mot", decouple=("in_proj",)), ValueError, r"\['in_proj'\].*'wq'"),
        (lambda: ModelConfig(scan_backend="jax"), ValueError, r"unknown scan_backend 'jax'"),
        (lambda: ModelConfig(arch="transformer", d_model=30, n_head=4), ValueError, r"not divisible"),
        (lambda: ModelConfig(n_layer=0), ValueError, r"n_layer must be >= 1"),
    ],
)
def test_bad_config(make, error, match):
    """Unknown arch / scale / part / backend and impossible sizes fail with the value and the valid choices."""
    with pytest.raises(error, match=match):
        make()


def test_bad_forward_input():
    """Bad tokens, modality ids or patch inputs fail with a message naming the problem."""
    model = build_model(small_cfg("mom", patch_dim=P, n_modalities=2))
    tokens = torch.randint(0, V, (2, 8))
    ids = torch.zeros(2, 8, dtype=torch.long)
    cases = [
        (dict(tokens=tokens[0], modality_ids=ids[0]), r"tokens must be a \(B, L\) integer tensor"),
        (dict(tokens=tokens.float(), modality_ids=ids), r"tokens must be a \(B, L\) integer tensor"),
        (dict(tokens=tokens + V, modality_ids=ids), rf"token id \d+ is out of range: valid ids are 0\.\.{V - 1}"),
        (dict(tokens=tokens), r"modality_ids \(B, L\) are required"),
        (dict(tokens=tokens, modality_ids=ids[:, :4]), r"modality_ids shape \(2, 4\) != tokens shape \(2, 8\)"),
        (dict(tokens=tokens, modality_ids=ids + 2), r"modality id 2 is out of range"),
        (dict(tokens=tokens, modality_ids=ids, patches=torch.randn(2, 8, 5)), r"patches must have shape"),
        (dict(tokens=tokens, modality_ids=ids, patches=torch.randn(2, 8, P)), r"patch_mask must be a \(B, L\)"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            model(**kwargs)
    plain = build_model(small_cfg("mamba"))
    with pytest.raises(ValueError, match="no patch layers"):
        plain(tokens, patches=torch.randn(2, 8, P), patch_mask=ids.bool(), timesteps=ids)


def test_backend_is_queryable():
    """A Mamba model reports the scan backend its forward uses here (the compiled kernel); transformers SDPA."""
    assert build_model(small_cfg("mom")).backend == "cpu"
    assert build_model(small_cfg("mot")).backend == "sdpa"


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_autocast_close_to_float32(arch):
    """Every arm runs under CPU bf16 autocast (GPU training's precision) within 2% (of the output scale) of float32."""
    model = build_model(small_cfg(arch, patch_dim=P, n_modalities=2))
    batch = transfusion_batch()
    ref = model(**batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(**batch)
    assert low.logits.dtype == torch.bfloat16
    for a, b in ((low.logits, ref.logits), (low.patch_pred, ref.patch_pred)):
        error = (a.float() - b).abs().max() / b.abs().max()
        assert error < 0.02, f"{arch}: bf16 deviates by {error:.3f} of the output scale"


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_is_bidirectional_within_an_image_for_the_attending_families_only(arch):
    """Transfusion: a later patch of the same image reaches an earlier patch's output in the transformer arms (their
    mask is causal across the sequence, bidirectional within each image) and never in the Mamba arms (causal by
    construction); nothing after position t reaches a position before the image."""
    model = build_model(small_cfg(arch, patch_dim=P, n_modalities=2)).eval()
    batch = transfusion_batch(1, 20, seed=2)
    batch["patch_mask"][0] = torch.arange(20).ge(5) & torch.arange(20).lt(11)  # one image: positions 5..10
    batch["modality_ids"][0] = batch["patch_mask"][0].long()
    out = model(**batch)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["patches"][0, 9] += 1.0
    out2 = model(**changed)
    torch.testing.assert_close(out2.logits[:, :5], out.logits[:, :5], rtol=0, atol=0)
    earlier_patches_moved = not torch.allclose(out2.patch_pred[:4], out.patch_pred[:4])  # positions 5..8
    assert earlier_patches_moved == ModelConfig(arch=arch).family.image_attention


@pytest.mark.parametrize("arch", BY_MODALITY)
def test_init_from_dense_starts_where_the_dense_arm_starts(arch):
    """With init_from_dense a sparse model built from the same random state as its dense arm holds the dense arm's
    initial weights in every expert, so the two are equal at step 0; a dense arm is unaffected."""
    cfg = small_cfg(arch, init_from_dense=True)
    torch.manual_seed(7)
    dense = build_model(cfg.dense())
    torch.manual_seed(7)
    sparse = build_model(cfg)
    tokens, ids = torch.randint(0, V, (2, 16)), interleaved_ids(2, 16, 3)
    torch.testing.assert_close(sparse(tokens, ids).logits, dense(tokens, ids).logits)
    torch.manual_seed(7)
    again = build_model(cfg.dense()).parameters()
    assert all(torch.equal(a, b) for a, b in zip(again, dense.parameters(), strict=True))
