"""Mamba-2 and MoM-2: parity with Hugging Face's Mamba2Mixer, the SSD scan against its recurrence, the dense/sparse
equivalences, generation, FLOPs, initialisation, weight decay and the CUDA kernel."""

import math

import pytest
import torch

from analysis.flops import analytic_flops, count_flops
from experiments.lit_module import decay_groups
from models import ModelConfig, build_model
from models.experts import expert_state_dict, upcycle_state_dict
from models.layers import ModalityRouting
from models.mamba2 import MAMBA2_PARTS, Mamba2Mixer
from models.ssd import ssd_chunked, ssd_ref, ssd_scan
from tests.helpers import interleaved_ids

D_MODEL, D_STATE, HEADDIM = 32, 8, 16  # E = 64: 4 heads of 16


def mixer(n_modalities: int = 1, **kwargs) -> Mamba2Mixer:
    kwargs = {"d_state": D_STATE, "headdim": HEADDIM, "chunk_size": 8, **kwargs}
    return Mamba2Mixer(D_MODEL, n_modalities=n_modalities, **kwargs)


def ssd_inputs(dtype, batch=2, L=37, H=4, P=8, G=2, N=6, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return dict(x=r(batch, L, H, P), dt=r(batch, L, H), A=-torch.rand(H, generator=g, dtype=dtype) * 8,
                B=r(batch, L, G, N), C=r(batch, L, G, N), D=r(H), dt_bias=r(H), dt_softplus=True)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# 1. The dense mixer is Hugging Face's Mamba2Mixer
# ----------------------------------------------------------------------------------------------------------------------


def test_dense_state_dict_has_mamba_ssm_names_and_shapes():
    """mamba-ssm's `Mamba2` keys and shapes (E = 64, H = 4, G = 2, conv over E + 2GN); decoupled parts keep their
    names with a leading modality axis."""
    E, H, G, N = 2 * D_MODEL, 4, 2, D_STATE
    conv = E + 2 * G * N
    want = {"in_proj.weight": (2 * E + 2 * G * N + H, D_MODEL), "conv1d.weight": (conv, 1, 4),
            "conv1d.bias": (conv,), "dt_bias": (H,), "A_log": (H,), "D": (H,), "norm.weight": (E,),
            "out_proj.weight": (D_MODEL, E)}  # fmt: skip
    assert {k: tuple(v.shape) for k, v in mixer(ngroups=2).state_dict().items()} == want
    sparse = mixer(3, ngroups=2)
    assert {k: tuple(v.shape) for k, v in sparse.state_dict().items()} == {k: (3, *s) for k, s in want.items()}


@pytest.mark.parametrize("ngroups", [1, 2])
def test_dense_mixer_equals_hugging_face_mamba2(ngroups):
    """Given the same weights, outputs and every gradient equal transformers' Mamba2Mixer (its torch path) within
    1e-4 relative, with L (19) not a multiple of the chunk (8)."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMamba2Mixer

    config = transformers.Mamba2Config(
        hidden_size=D_MODEL, state_size=D_STATE, expand=2, head_dim=HEADDIM, num_heads=2 * D_MODEL // HEADDIM,
        n_groups=ngroups, conv_kernel=4, chunk_size=8, use_conv_bias=True, use_bias=False, num_hidden_layers=1,
        layer_norm_epsilon=1e-5,
    )  # fmt: skip
    torch.manual_seed(0)
    ours = mixer(ngroups=ngroups, scan_backend="torch")
    ref = HFMamba2Mixer(config, layer_idx=0).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 19, D_MODEL)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, out_ref = ours(x_ours), ref(x_ref)
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-6)
    g = torch.randn_like(out)
    out.backward(g)
    out_ref.backward(g)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-6)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------------------------------------------------
# 2. The chunked SSD is the recurrence
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
def test_chunked_ssd_equals_the_sequential_recurrence_in_float64(chunk):
    """Groups (2 of 2 heads each), D, dt_bias and softplus, L = 37 (no multiple of any chunk but 1)."""
    inputs = ssd_inputs(torch.float64)
    ref = ssd_ref(**inputs)
    y = ssd_chunked(**{k: v for k, v in inputs.items() if k != "dt_softplus"}, chunk_size=chunk, dt_softplus=True)
    assert (y - ref).abs().max() < 1e-12 * ref.abs().max()


def test_chunked_ssd_with_per_token_head_values_equals_the_recurrence():
    """A, D and dt_bias given per token (a sparse arm's decoupled ones), in float64."""
    inputs = ssd_inputs(torch.float64)
    g = torch.Generator().manual_seed(1)
    for name in ("A", "D", "dt_bias"):
        inputs[name] = inputs[name] * torch.rand(2, 37, 4, generator=g, dtype=torch.float64)
    ref = ssd_ref(**inputs)
    assert (ssd_scan(**inputs, chunk_size=8, backend="torch") - ref).abs().max() < 1e-12 * ref.abs().max()


def test_chunk_size_does_not_change_the_result_in_float32():
    inputs = ssd_inputs(torch.float32, L=150)
    inputs["A"] = inputs["A"] * 4  # strong decay: the cumulative sums the stable segment sum protects
    outs = [ssd_scan(**inputs, chunk_size=q, backend="torch") for q in (16, 32, 64)]
    for y in outs[1:]:
        torch.testing.assert_close(y, outs[0], rtol=1e-5, atol=1e-5)


def test_chunked_ssd_gradients_equal_the_recurrences():
    inputs = ssd_inputs(torch.float64, L=21)
    tensors = {k: v.requires_grad_() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    g = torch.randn(2, 21, 4, 8, dtype=torch.float64)
    grads = []
    for fn in (lambda: ssd_ref(**inputs), lambda: ssd_scan(**inputs, chunk_size=8, backend="torch")):
        grads.append(torch.autograd.grad(fn(), list(tensors.values()), g))
    for name, a, b in zip(tensors, *grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_the_traced_one_op_scan_has_the_chunked_scans_gradients():
    """The op the FLOP counter traces (`_SSDChunkedFn`) recomputes its backward: same gradients as autograd's."""
    from models.ssd import _SSDChunkedFn

    inputs = ssd_inputs(torch.float64, L=13)
    tensors = [inputs[k].requires_grad_() for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")]
    g = torch.randn(2, 13, 4, 8, dtype=torch.float64)
    a = torch.autograd.grad(_SSDChunkedFn.apply(*tensors, 4, True), tensors, g)
    b = torch.autograd.grad(ssd_chunked(*tensors[:5], 4, tensors[5], tensors[6], True), tensors, g)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# 3. Upcycled MoM-2 is dense Mamba-2
# ----------------------------------------------------------------------------------------------------------------------

SUBSETS = [MAMBA2_PARTS, ("in_proj", "dt_bias", "out_proj"), ("conv1d",), ("A_log", "D"), ("norm",), ()]


@pytest.mark.parametrize("decouple", SUBSETS, ids=lambda d: "+".join(d) or "none")
def test_sparse_with_identical_experts_equals_dense_exactly(decouple):
    torch.manual_seed(0)
    dense, sparse = mixer(ngroups=2), mixer(3, ngroups=2, decouple=decouple)
    sparse.load_state_dict(upcycle_state_dict(sparse, dense.state_dict()))
    x = torch.randn(2, 19, D_MODEL)
    ids = interleaved_ids(2, 19, 3)
    assert torch.equal(sparse(x, ids), dense(x))


@pytest.mark.parametrize("k", [0, 2])
def test_sparse_fed_one_modality_equals_dense_with_that_expert(k):
    torch.manual_seed(0)
    sparse = mixer(3)
    dense = mixer()
    dense.load_state_dict(expert_state_dict(sparse, k))
    x = torch.randn(2, 11, D_MODEL)
    torch.testing.assert_close(sparse(x, torch.full((2, 11), k)), dense(x), rtol=0, atol=1e-6)


def test_an_absent_modalitys_experts_get_an_exact_zero_gradient():
    torch.manual_seed(0)
    sparse = mixer(3)  # every part decoupled
    ids = interleaved_ids(2, 16, 2)  # modalities 0 and 1 only
    sparse(torch.randn(2, 16, D_MODEL), ModalityRouting(ids, 3)).square().sum().backward()
    for name, p in sparse.named_parameters():
        assert p.grad is not None, name
        assert torch.count_nonzero(p.grad[2]) == 0, name
        assert torch.count_nonzero(p.grad[0]) > 0, name


# ----------------------------------------------------------------------------------------------------------------------
# 4. Generation and 5. FLOPs (the model-level tests over every arm also cover mamba2 / mom2: tests/test_generate.py,
# tests/test_flops.py, tests/test_float64.py); here the recurrent step against the mixer with every part decoupled
# ----------------------------------------------------------------------------------------------------------------------


def test_steps_equal_the_full_forward_with_every_part_decoupled_and_modality_switches():
    torch.manual_seed(0)
    sparse = mixer(3, ngroups=2)
    x, ids = torch.randn(2, 21, D_MODEL), interleaved_ids(2, 21, 3, seed=2)
    with torch.no_grad():
        full = sparse(x, ids)
        conv, ssm = sparse.allocate_inference_cache(2)
        steps = torch.cat([sparse.step(x[:, t : t + 1], ids[:, t : t + 1], conv, ssm) for t in range(21)], dim=1)
    assert (steps - full).norm() / full.norm() < 1e-5


@pytest.mark.parametrize("arch", ["mamba2", "mom2"])
def test_fvcore_equals_the_analytic_count_and_sparse_costs_dense(arch):
    cfg = ModelConfig.from_scale("tiny", arch=arch, vocab_size=96, n_modalities=2, d_model=64, chunk_size=16)
    tokens, ids = torch.randint(0, 96, (2, 40)), interleaved_ids(2, 40, 2)
    counted = count_flops(build_model(cfg), {"tokens": tokens, "modality_ids": ids})
    analytic = analytic_flops(cfg, 40)
    assert counted.per_token == pytest.approx(analytic.forward_per_token, rel=1e-12)
    assert analytic == analytic_flops(cfg.dense(), 40)
    assert counted.by_operator["ssd_scan"] > 0


@pytest.mark.parametrize("decouple", [MAMBA2_PARTS, ("conv1d", "A_log")], ids="+".join)
def test_fvcore_equals_the_analytic_count_for_ablation_variants(decouple):
    """A decoupled conv runs each of the M kernels: M times the dense conv's FLOPs, in both counts."""
    cfg = ModelConfig.from_scale("tiny", arch="mom2", vocab_size=96, n_modalities=3, d_model=64, chunk_size=16,
                                 decouple=decouple)  # fmt: skip
    counted = count_flops(build_model(cfg), {"tokens": torch.randint(0, 96, (2, 40)),
                                             "modality_ids": interleaved_ids(2, 40, 3)})  # fmt: skip
    analytic = analytic_flops(cfg, 40)
    assert counted.per_token == pytest.approx(analytic.forward_per_token, rel=1e-12)
    assert analytic.conv == 3 * analytic_flops(cfg.dense(), 40).conv


def test_ssd_flops_known_answer():
    """One head of P = 2, N = 3, one group, Q = 4, L = 6 (two chunks): per step 4 + 3·4 + 2·4·2 + 4·3·2 + 6·2 = 68 and
    the scores 2·4·3 = 24; per chunk 1 + 2·2·3 = 13."""
    from models.ssd import ssd_flops

    assert ssd_flops(1, 6, 1, 2, 3, 1, 4) == 6 * (68 + 24) + 2 * 13


# ----------------------------------------------------------------------------------------------------------------------
# Initialisation and weight decay
# ----------------------------------------------------------------------------------------------------------------------


def test_initialisation_is_mamba_ssms():
    torch.manual_seed(0)
    m = Mamba2Mixer(256, d_state=16, headdim=8)  # 64 heads
    A = torch.exp(m.A_log)
    assert 1 <= A.min() and A.max() <= 16
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert 0.001 * 0.999 <= dt.min() and dt.max() <= 0.1 * 1.001
    assert torch.equal(m.D, torch.ones(64))
    assert m.A_log.dtype == torch.float32


def test_dt_bias_a_log_d_and_norms_are_never_weight_decayed():
    model = build_model(ModelConfig.from_scale("tiny", arch="mom2", vocab_size=64, n_modalities=2, d_model=64))
    decayed, exempt = decay_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    exempt_names = {names[id(p)].rsplit(".", 1)[-1] for p in exempt}
    assert exempt_names == {"dt_bias", "A_log", "D", "weight", "bias"}
    for p in decayed:
        assert names[id(p)].endswith(("in_proj.weight", "out_proj.weight", "conv1d.weight", "embedding.weight",
                                      "lm_head.weight")), names[id(p)]  # fmt: skip
    assert any(names[id(p)].endswith("mixer.in_proj.weight") for p in decayed)


def test_bad_shapes_say_what_is_valid():
    with pytest.raises(ValueError, match="multiple of headdim"):
        Mamba2Mixer(32, headdim=24)
    with pytest.raises(ValueError, match="ngroups"):
        ModelConfig.from_scale("tiny", arch="mamba2", ngroups=3)
    with pytest.raises(ValueError, match="scan_backend"):
        ModelConfig.from_scale("tiny", arch="mamba2", scan_backend="cpu")


# ----------------------------------------------------------------------------------------------------------------------
# 6. mamba-ssm's SSD kernel on CUDA
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mamba_ssm_chunk_scan_equals_the_torch_path_on_gpu(dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("mamba_ssm.ops.triton.ssd_combined")
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in ssd_inputs(torch.float32, L=300).items()}
    for k in ("x", "dt", "B", "C"):
        inputs[k] = inputs[k].to(dtype)
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    ref = ssd_scan(**inputs, chunk_size=64, backend="torch").float()
    got = ssd_scan(**inputs, chunk_size=64, backend="cuda").float()
    assert (got - ref).norm() / ref.norm() < tol
    assert math.isfinite(got.sum().item())
