"""MambaMixer: parity with an independent implementation, the dense/sparse equivalences, init and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.experts import expert_state_dict, upcycle_state_dict
from models.layers import ModalityRouting
from models.mamba import MAMBA_PARTS, MambaMixer
from tests.helpers import interleaved_ids

D_MODEL, D_STATE = 32, 8

# mamba-ssm's `Mamba` (and Hugging Face's `MambaMixer`) state dict for d_model D, E = 2D, N = d_state, R = ceil(D/16).
E, N, R = 2 * D_MODEL, D_STATE, math.ceil(D_MODEL / 16)
MAMBA_SSM_KEYS = {
    "in_proj.weight": (2 * E, D_MODEL),
    "conv1d.weight": (E, 1, 4),
    "conv1d.bias": (E,),
    "x_proj.weight": (R + 2 * N, E),
    "dt_proj.weight": (E, R),
    "dt_proj.bias": (E,),
    "A_log": (E, N),
    "D": (E,),
    "out_proj.weight": (D_MODEL, E),
}


def mixer(n_modalities: int = 1, **kwargs) -> MambaMixer:
    return MambaMixer(D_MODEL, d_state=D_STATE, n_modalities=n_modalities, **kwargs)


def test_dense_state_dict_matches_mamba_ssm():
    """Dense keys and shapes are mamba-ssm's; decoupled projections keep their names with a leading modality axis."""
    dense = mixer()
    assert {k: tuple(v.shape) for k, v in dense.state_dict().items()} == MAMBA_SSM_KEYS
    sparse = mixer(3, decouple=("in_proj", "dt_proj"))
    shapes = {k: tuple(v.shape) for k, v in sparse.state_dict().items()}
    for key, shape in MAMBA_SSM_KEYS.items():
        split = key.split(".")[0] in ("in_proj", "dt_proj")
        assert shapes[key] == ((3, *shape) if split else shape), key


@pytest.mark.parametrize("train", [False, True])
def test_dense_mixer_equals_hugging_face_mamba(train):
    """Given the same weights, our dense mixer's outputs and every gradient equal transformers' MambaMixer."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.mamba.modeling_mamba import MambaMixer as HFMambaMixer

    config = transformers.MambaConfig(
        hidden_size=D_MODEL, state_size=D_STATE, intermediate_size=E, conv_kernel=4, time_step_rank=R,
        use_conv_bias=True, use_bias=False, num_hidden_layers=1,
    )  # fmt: skip
    ref = HFMambaMixer(config, layer_idx=0).train(train)
    ours = mixer(scan_backend="torch").train(train)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 19, D_MODEL)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, out_ref = ours(x_ours), ref(x_ref)
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(out)
    out.backward(g)
    out_ref.backward(g)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("decouple", [MAMBA_PARTS, ("in_proj", "x_proj", "out_proj"), ("dt_proj",), ()])
def test_sparse_with_identical_experts_equals_dense(decouple):
    """Upcycled experts reproduce the dense mixer, including when dt_proj is shared (its bias is never dropped)."""
    dense, sparse = mixer(), mixer(3, decouple=decouple)
    sparse.load_state_dict(upcycle_state_dict(sparse, dense.state_dict()))
    x, ids = torch.randn(3, 23, D_MODEL), interleaved_ids(3, 23, 3)
    torch.testing.assert_close(sparse(x, ids), dense(x))


def test_dt_bias_is_applied_when_dt_proj_is_shared():
    """With a shared dt_proj (the case the official MoM code gets wrong) changing the dt bias changes the output."""
    m = mixer(2, decouple=("in_proj", "x_proj", "out_proj"))
    x, ids = torch.randn(1, 9, D_MODEL), interleaved_ids(1, 9, 2)
    before = m(x, ids)
    with torch.no_grad():
        m.dt_proj.bias.add_(2.0)
    assert not torch.allclose(before, m(x, ids))


@pytest.mark.parametrize("k", [0, 1, 2])
def test_sparse_fed_one_modality_equals_dense_with_that_expert(k):
    """A sparse mixer fed only modality k equals the dense mixer holding expert k's weights."""
    sparse = mixer(3)
    dense = mixer()
    dense.load_state_dict(expert_state_dict(sparse, k))
    x = torch.randn(2, 17, D_MODEL)
    ids = torch.full((2, 17), k)
    torch.testing.assert_close(sparse(x, ids), dense(x))


def test_absent_modality_gets_zero_gradient_in_mixer():
    """Every decoupled projection's expert for a modality absent from the batch gets an exact zero gradient."""
    m = mixer(3)
    ids = torch.randint(0, 2, (2, 13))  # modalities 0 and 1 only
    m(torch.randn(2, 13, D_MODEL), ids).square().mean().backward()
    for part in MAMBA_PARTS:
        layer = getattr(m, part)
        for p in layer.parameters():
            assert torch.count_nonzero(p.grad[2]) == 0, part
            assert torch.count_nonzero(p.grad[0]) > 0, part


def test_causal():
    """Changing the input at position t+1 leaves outputs at positions <= t unchanged (dense and sparse)."""
    for m, ids in ((mixer(), None), (mixer(2), interleaved_ids(1, 16, 2))):
        x = torch.randn(1, 16, D_MODEL)
        y = m(x, ids)
        x2 = x.clone()
        x2[:, 9] += 1.0
        y2 = m(x2, ids)
        torch.testing.assert_close(y2[:, :9], y[:, :9], rtol=0, atol=0)
        assert not torch.allclose(y2[:, 9:], y[:, 9:])


def test_reference_backend_equals_fast_backends():
    """The mixer gives the same output and parameter gradients on the sequential reference scan, the compiled
    kernels (scan and conv) and the torch scan."""
    m = mixer(2)
    x, ids = torch.randn(2, 21, D_MODEL), interleaved_ids(2, 21, 2)

    def output_and_grads():
        m.zero_grad()
        y = m(x, ids)
        y.pow(2).sum().backward()
        return y.detach(), {k: p.grad.clone() for k, p in m.named_parameters()}

    fast, fast_grads = output_and_grads()
    assert m.last_backend == "cpu"
    for backend in ("ref", "torch"):
        m.scan_backend = backend
        y, grads = output_and_grads()
        torch.testing.assert_close(y, fast)
        torch.testing.assert_close(grads, fast_grads, rtol=1e-4, atol=1e-5)
        assert m.last_backend == backend


def test_initialisation():
    """S4D-real A, D = 1, softplus(dt bias) in [dt_min, dt_max], per-expert dt draws, no weight decay on A_log, D."""
    m = mixer(3, dt_min=0.002, dt_max=0.05)
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(E, N))
    assert torch.equal(m.D, torch.ones(E))
    dt = F.softplus(m.dt_proj.bias)
    assert m.dt_proj.bias.shape == (3, E)
    assert dt.min() >= 0.002 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    assert not torch.equal(m.dt_proj.bias[0], m.dt_proj.bias[1])
    assert m.dt_proj.weight.abs().max() <= R**-0.5


def test_bf16_autocast_close_to_float32():
    """Under CPU bf16 autocast the sparse mixer runs and stays within bf16 rounding of its float32 output."""
    m = mixer(2)
    x, ids = torch.randn(2, 15, D_MODEL), interleaved_ids(2, 15, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(x, ids)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), m(x, ids), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(decouple=("in_proj", "z_proj")), r"unknown Mamba part\(s\) to decouple: \['z_proj'\].*in_proj"),
        (dict(n_modalities=1, decouple=("typo",)), r"\['typo'\]"),
        (dict(scan_backend="jax"), r"unknown scan_backend 'jax'.*'torch'"),
        (dict(dt_init="zeros"), r"unknown dt_init 'zeros'"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    """Unknown part names, backends or init schemes fail with the bad value and the valid choices."""
    with pytest.raises(ValueError, match=match):
        MambaMixer(D_MODEL, **{"n_modalities": 2, **kwargs})


def test_bad_forward_input():
    """Wrong rank or width, missing or out-of-range modality ids, and an unavailable backend fail early."""
    m = mixer(2)
    with pytest.raises(ValueError, match=r"expects x of shape \(B, L, 32\), got \(5, 32\)"):
        m(torch.randn(5, D_MODEL), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="modality_ids .* are required"):
        m(torch.randn(1, 5, D_MODEL))
    with pytest.raises(ValueError, match=r"modality id 2 is out of range.*0\.\.1"):
        m(torch.randn(1, 3, D_MODEL), torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="routing was built for 3 modalities"):
        m(torch.randn(1, 3, D_MODEL), ModalityRouting(torch.tensor([[0, 1, 2]]), 3))
    m.scan_backend = "cuda"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            m(torch.randn(1, 3, D_MODEL), torch.tensor([[0, 1, 1]]))


@pytest.mark.gpu
def test_dense_mixer_equals_mamba_ssm_mamba_on_gpu():
    """On CUDA with mamba-ssm, our dense mixer (cuda backend) equals mamba-ssm's Mamba with the same weights."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    mamba_ssm = pytest.importorskip("mamba_ssm")
    torch.manual_seed(0)
    ref = mamba_ssm.Mamba(d_model=64, d_state=16, d_conv=4, expand=2, use_fast_path=False).cuda()
    ours = MambaMixer(64, d_state=16, scan_backend="cuda").cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 128, 64, device="cuda")
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-3, atol=1e-4)
    assert ours.last_backend == "cuda"
    ours_torch = MambaMixer(64, d_state=16, scan_backend="torch").cuda()
    ours_torch.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours_torch(x), ref(x), rtol=1e-3, atol=1e-4)
