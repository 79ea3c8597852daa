"""FLOPs: the analytic formula against fvcore (× 2, with handles), mixture == dense, known answers, no silent zeros."""

import warnings
from dataclasses import replace

import pytest
import torch
from torch import nn

from analysis.flops import IGNORED_OPS, FlopCountAnalysis, analytic_flops, count_flops, flops_per_token, fvcore_handle
from models import ARMS, MAMBA, ModelConfig, build_model, param_count
from models.scan import SCAN_FLOPS_PER_CHANNEL, SCAN_FLOPS_PER_STATE, scan_flops, selective_scan
from models.transformer import mlp_hidden
from tests.helpers import interleaved_ids

V, P, B, L = 96, 12, 2, 32
PRICED_OPS = {"linear", "conv", "selective_scan", "ssd_scan", "scaled_dot_product_attention"}


class _Scan(nn.Module):
    def forward(self, u, delta, A, B, C, D, z):
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_softplus=True, backend="torch")


def count_scan_flops(*args) -> int:
    """FLOPs fvcore (× 2) gives one selective_scan call, made as MambaMixer makes it, with the Mamba family's handle."""
    name = "prim::PythonOp._SelectiveScanFn"
    analysis = FlopCountAnalysis(_Scan(), args).set_op_handle(name, fvcore_handle(MAMBA.flop_ops[name]))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return round(2 * analysis.total())


def tiny_cfg(arch: str, **overrides) -> ModelConfig:
    base = dict(vocab_size=V, n_modalities=2, d_model=32, n_layer=2, n_head=4, mlp_multiple_of=32, d_state=8)
    return ModelConfig(arch=arch, **{**base, **overrides})


def make_batch(patches: bool, seed: int = 0) -> dict:
    ids = interleaved_ids(B, L, 2, seed)
    g = torch.Generator().manual_seed(seed)
    batch = dict(tokens=torch.randint(0, V, (B, L), generator=g), modality_ids=ids, labels=torch.zeros(B, L))
    if patches:
        batch.update(
            patches=torch.randn(B, L, P, generator=g),
            patch_mask=ids == 1,
            timesteps=torch.randint(0, 1000, (B, L), generator=g),
        )
    return batch


def counted_and_analytic(arch: str, patches: bool):
    cfg = tiny_cfg(arch, patch_dim=P if patches else 0)
    batch = make_batch(patches)
    fraction = batch["patch_mask"].float().mean().item() if patches else 0.0
    return count_flops(build_model(cfg), batch), analytic_flops(cfg, L, fraction)


@pytest.mark.parametrize("patches", [False, True], ids=["tokens", "transfusion"])
@pytest.mark.parametrize("arch", list(ARMS))
def test_fvcore_matches_analytic(arch, patches):
    """fvcore × 2 with the scan/SDPA/conv handles equals the analytic forward FLOPs per token (≤ 2%, in fact exact)."""
    counted, analytic = counted_and_analytic(arch, patches)
    gap = counted.per_token / analytic.forward_per_token - 1
    print(
        f"{arch} patches={patches}: counted {counted.per_token:.1f} analytic {analytic.forward_per_token:.1f} "
        f"gap {gap:+.2e}"
    )
    assert abs(gap) <= 0.02
    assert counted.per_token == pytest.approx(analytic.forward_per_token, rel=1e-9)


@pytest.mark.parametrize("arch", list(ARMS))
def test_no_silent_zeros(arch):
    """Unpriced ops are all listed in IGNORED_OPS; the scan or SDPA is priced non-zero; nothing else is priced."""
    counted, analytic = counted_and_analytic(arch, patches=True)
    assert set(counted.unsupported) <= set(IGNORED_OPS), set(counted.unsupported) - set(IGNORED_OPS)
    assert set(counted.by_operator) <= PRICED_OPS  # e.g. a matmul traced from inside the scan would double count
    mixer_ops = {op.label for op in ARMS[arch].family.flop_ops.values()}  # the scan and conv, or attention
    for op in ("linear", *mixer_ops):
        assert counted.by_operator.get(op, 0) > 0, (op, counted.by_operator)


@pytest.mark.parametrize("arch", [name for name, arm in ARMS.items() if arm.family.name == "mamba"])
def test_the_scan_traces_as_one_op(arch):
    """The tracer records the scan as one op, priced by its shapes: none of the chunk loop's own ops reach the graph
    (tracing them cost about a second per count at the tiny recipe's shapes, and counted nothing)."""
    counted, _ = counted_and_analytic(arch, patches=False)
    inside = {"aten::addcmul_", "aten::exp2_", "aten::softplus", "aten::sigmoid", "aten::mul_", "aten::matmul"}
    assert not inside & set(counted.unsupported), counted.unsupported
    assert counted.by_operator["selective_scan"] > 0


def test_unknown_unpriced_op_raises(monkeypatch):
    """An unpriced op that IGNORED_OPS does not explain is an error, not a silent zero."""
    monkeypatch.delitem(IGNORED_OPS, "aten::rms_norm")
    with pytest.raises(ValueError, match="rms_norm"):
        count_flops(build_model(tiny_cfg("transformer")), make_batch(False))


@pytest.mark.parametrize("sparse", [name for name, arm in ARMS.items() if arm.is_sparse])
def test_mixture_flops_equal_dense(sparse):
    """A mixture arm has exactly its dense baseline's analytic FLOPs per token, and counted within 1%."""
    cfg = tiny_cfg(sparse, patch_dim=P)
    assert analytic_flops(cfg, L, 0.25) == analytic_flops(cfg.dense(), L, 0.25)
    dense_cfg = replace(cfg, arch=ARMS[sparse].dense, decouple=(), routing=None)
    assert flops_per_token(cfg, L) == flops_per_token(dense_cfg, L)
    batch = make_batch(patches=True)
    dense, mixed = (count_flops(build_model(c), batch).per_token for c in (cfg.dense(), cfg))
    assert mixed == pytest.approx(dense, rel=0.01)


def test_transformer_known_answer():
    """Dense transformer: matmul + head = 2(4d² + 3dF)·n_layer + 2dV, attention = 4Ld·n_layer; ≈ 6N + 12·n_layer·L·d."""
    cfg = tiny_cfg("transformer", d_model=64, vocab_size=128)
    d, F, n, Vc = cfg.d_model, mlp_hidden(cfg.d_model, cfg.mlp_multiple_of), cfg.n_layer, cfg.vocab_size
    report = analytic_flops(cfg, 64)
    assert report.matmul + report.head == 2 * (4 * d * d + 3 * d * F) * n + 2 * d * Vc
    assert report.attention == 4 * 64 * d * n
    assert report.scan == report.conv == report.patch == 0
    assert report.train_per_token == 3 * report.forward_per_token
    n_params = param_count(cfg).active - Vc * d  # without the (free) embedding; includes norm weights
    estimate = 6 * n_params + 12 * n * 64 * d
    assert report.train_per_token == pytest.approx(estimate, rel=0.02)


def test_mamba_known_answer():
    """Dense Mamba per block: projections 2(2dE + E(R+2N) + RE + Ed), conv 2·d_conv·E, scan E(7N + 6); no L term."""
    cfg = tiny_cfg("mamba")
    d, E, N, R, K = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank_value, cfg.d_conv
    report = analytic_flops(cfg, 16)
    assert report.matmul == cfg.n_block * 2 * (2 * d * E + E * (R + 2 * N) + R * E + E * d)
    assert report.conv == cfg.n_block * 2 * K * E
    assert report.scan == cfg.n_block * E * (7 * N + 6)
    assert report.attention == 0
    assert analytic_flops(cfg, 16) == analytic_flops(cfg, 512)


@pytest.mark.parametrize("shape", [(2, 8, 4, 5), (2, 1024, 64, 16)], ids=["one-chunk", "chunked"])
def test_scan_handle_known_answer(shape):
    """fvcore prices one selective_scan call (traced as one PythonOp) at B·E·L·(7N + 6) FLOPs."""
    b, e, n, length = shape
    assert (SCAN_FLOPS_PER_STATE, SCAN_FLOPS_PER_CHANNEL) == (7, 6)
    args = (
        torch.randn(b, e, length),
        torch.randn(b, e, length),
        -torch.rand(e, n),
        torch.randn(b, n, length),
        torch.randn(b, n, length),
        torch.randn(e),
        torch.randn(b, e, length),
    )
    counted = count_scan_flops(*args)
    assert counted == scan_flops(b, e, length, n) == b * e * length * (7 * n + 6)


def test_patch_fraction_validation():
    """patch_fraction must be in [0, 1] and needs patch layers."""
    with pytest.raises(ValueError, match="patch_dim"):
        analytic_flops(tiny_cfg("mamba"), 16, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        analytic_flops(tiny_cfg("mamba", patch_dim=P), 16, 1.5)


def test_presets_table_command(capsys, monkeypatch):
    """`python -m analysis` prints every paper preset x arm x setting with params and FLOPs (meta device)."""
    from analysis.__main__ import main

    monkeypatch.setattr("sys.argv", ["analysis", "--scales", "163m"])
    main()
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "163m" in r]
    assert len(rows) == 3 * len(ARMS)
    assert "| transfusion | 163m | mom | 274.4M | 162.3M |" in "\n".join(rows)
    assert "| transfusion | 163m | mom_hash | 274.4M | 162.3M |" in "\n".join(rows)


@pytest.mark.parametrize(("control", "sparse"), [("mom_hash", "mom"), ("mot_hash", "mot")])
def test_hash_controls_cost_exactly_their_sparse_arm(control, sparse):
    """A position-hash control has exactly its sparse arm's total and active parameters (analytic and modules) and
    FLOPs per token (analytic, and counted by fvcore on the same batch), at M = 2 and 3, with patch layers."""
    for m in (2, 3):
        cfg_c, cfg_s = (tiny_cfg(a, n_modalities=m, patch_dim=P) for a in (control, sparse))
        assert param_count(cfg_c) == param_count(cfg_s)
        model_c, model_s = build_model(cfg_c), build_model(cfg_s)
        assert model_c.param_count() == model_s.param_count() == param_count(cfg_s)
        assert param_count(cfg_c).total > param_count(cfg_c).active == param_count(cfg_c.dense()).total
        assert analytic_flops(cfg_c, L, 0.25) == analytic_flops(cfg_s, L, 0.25)
        assert flops_per_token(cfg_c, L) == flops_per_token(cfg_s, L)
        batch = make_batch(patches=True)
        assert count_flops(model_c, batch).by_operator == count_flops(model_s, batch).by_operator
