"""Per-modality routing primitives: ModalityRouting, ModalityLinear, ModalityRMSNorm, upcycling/export."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.experts import expert_state_dict, upcycle_state_dict
from models.layers import (
    ModalityLinear,
    ModalityRMSNorm,
    ModalityRouting,
    row_bucket,
)
from tests.helpers import interleaved_ids


def per_token_linear(layer: ModalityLinear, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Independent reference: a Python loop over tokens, each through its own modality's weights."""
    rows, flat = x.reshape(-1, x.shape[-1]), ids.reshape(-1)
    out = [
        F.linear(r, layer.weight[m], None if layer.bias is None else layer.bias[m])
        for r, m in zip(rows, flat, strict=True)
    ]
    return torch.stack(out).view(*ids.shape, -1)


def test_single_modality_linear_is_nn_linear():
    """With one modality, ModalityLinear has nn.Linear's parameters, state-dict keys, initialisation and output."""
    torch.manual_seed(3)
    ours = ModalityLinear(12, 7, n_modalities=1, bias=True)
    torch.manual_seed(3)
    ref = nn.Linear(12, 7, bias=True)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours.bias, ref.bias, rtol=0, atol=0)
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_modality_linear_equals_per_token_loop(bias):
    """Grouped routing gives each token its own modality's output, and the same gradients as a per-token loop."""
    layer = ModalityLinear(6, 4, n_modalities=3, bias=bias)
    ids = interleaved_ids(3, 11, 3)
    x = torch.randn(3, 11, 6, requires_grad=True)
    out = layer(x, ModalityRouting(ids, 3))
    ref_x = x.detach().clone().requires_grad_()
    ref = per_token_linear(layer, ref_x, ids)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *layer.parameters()], g)
    ref_grads = torch.autograd.grad(ref, [ref_x, *layer.parameters()], g)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_routing_writes_every_token_exactly_once():
    """sort() is a permutation grouped by modality and unsort() restores sequence order bit for bit."""
    ids = interleaved_ids(4, 37, 3)
    routing = ModalityRouting(ids, 3)
    assert torch.equal(torch.sort(routing.order).values, torch.arange(ids.numel()))  # each token once
    sorted_ids = ids.reshape(-1)[routing.order]
    assert torch.equal(sorted_ids, torch.sort(ids.reshape(-1)).values)  # grouped by modality
    assert routing.counts == torch.bincount(ids.reshape(-1), minlength=3).tolist()
    x = torch.randn(4, 37, 5)
    assert torch.equal(routing.unsort(routing.sort(x)), x)
    # Tag every token with its own index: after a round trip through a sparse layer's routing each tag appears once.
    tags = torch.arange(ids.numel(), dtype=torch.float32).view(4, 37, 1)
    assert torch.equal(routing.unsort(routing.sort(tags)), tags)


def test_gather_in_buckets_then_scatter_is_the_identity():
    """Blocks padded to a multiple of the bucket (a repeated row) scatter back to exactly the input."""
    ids = interleaved_ids(3, 41, 3)
    routing = ModalityRouting(ids, 3)
    x = torch.randn(3, 41, 6)
    blocks = routing.gather(x, bucket=16)
    assert all(b.shape[0] % 16 == 0 and b.shape[0] - n < 16 for b, n in zip(blocks, routing.counts, strict=True))
    assert torch.equal(routing.scatter(blocks), x)


def test_row_buckets_only_for_cpu_bf16():
    """oneDNN's per-shape kernels are a CPU bf16 matter: buckets there (bf16 tensors or bf16 autocast), none else."""
    x = torch.randn(4, 8)
    assert row_bucket(x) == 1 and row_bucket(x.double()) == 1 and row_bucket(x.bfloat16()) == 64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert row_bucket(x) == 64


@pytest.mark.parametrize("sorted_rows", [False, True])
def test_bucketed_expert_matmuls_equal_unbucketed_under_bf16_autocast(sorted_rows, monkeypatch):
    """Under CPU bf16 autocast the padded matmuls give every real row the output and every parameter the gradient of
    the unpadded ones (within bf16 rounding: a padded block may take another kernel), padding rows contributing 0."""
    ids = interleaved_ids(4, 53, 3)
    routing = ModalityRouting(ids, 3)
    torch.manual_seed(0)
    layer = ModalityLinear(16, 24, n_modalities=3, bias=True)
    x = torch.randn(4, 53, 16)
    results = []
    for bucket in (64, 1):
        monkeypatch.setattr("models.layers.row_bucket", lambda t, b=bucket: b)
        layer.zero_grad()
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if sorted_rows:
                out = routing.unsort(layer.forward_sorted(routing.sort(leaf), routing))
            else:
                out = layer(leaf, routing)
        out.float().square().sum().backward()
        results.append((out.float(), leaf.grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_absent_modality_expert_gets_zero_gradient():
    """An expert whose modality is not in the batch gets an exact zero gradient (not None), others do not."""
    layer = ModalityLinear(5, 3, n_modalities=3, bias=True)
    norm = ModalityRMSNorm(5, n_modalities=3)
    ids = torch.tensor([[0, 2, 2, 0, 2], [2, 0, 0, 0, 2]])
    routing = ModalityRouting(ids, 3)
    layer(norm(torch.randn(2, 5, 5), routing), routing).sum().backward()
    for p in (layer.weight, layer.bias, norm.weight):
        assert p.grad is not None
        assert torch.count_nonzero(p.grad[1]) == 0
        assert torch.count_nonzero(p.grad[0]) > 0 and torch.count_nonzero(p.grad[2]) > 0


def test_routing_never_computes_every_expert_on_every_token():
    """A 3-expert layer spends the same matmul FLOPs as its dense counterpart: each token meets one expert."""
    x, ids = torch.randn(4, 32, 16), interleaved_ids(4, 32, 3)
    dense, sparse = ModalityLinear(16, 24, 1), ModalityLinear(16, 24, 3)
    counts = []
    for layer, routing in ((dense, None), (sparse, ModalityRouting(ids, 3))):
        with FlopCounterMode(display=False) as counter:
            layer(x, routing)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 2 * 4 * 32 * 16 * 24


def test_modality_rmsnorm():
    """One modality: x / rms(x) * w. Several: each token scaled by its own modality's weight."""
    x = torch.randn(2, 9, 8)
    rms = x.pow(2).mean(-1, keepdim=True).add(1e-5).rsqrt()
    norm1 = ModalityRMSNorm(8)
    nn.init.normal_(norm1.weight)
    torch.testing.assert_close(norm1(x), x * rms * norm1.weight)
    ids = interleaved_ids(2, 9, 3)
    norm3 = ModalityRMSNorm(8, n_modalities=3)
    nn.init.normal_(norm3.weight)
    torch.testing.assert_close(norm3(x, ModalityRouting(ids, 3)), x * rms * norm3.weight[ids])


def test_bf16_autocast():
    """Under CPU bf16 autocast the routed layer runs, returns bf16 and stays close to float32."""
    layer = ModalityLinear(16, 8, n_modalities=2)
    ids, x = interleaved_ids(2, 10, 2), torch.randn(2, 10, 16)
    routing = ModalityRouting(ids, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, routing)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(x, routing), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (torch.tensor([[0, 1, 3]]), r"modality id 3 is out of range.*valid ids are 0\.\.2"),
        (torch.tensor([[0, -1, 1]]), r"modality id -1 is out of range"),
        (torch.tensor([0, 1, 2]), r"\(B, L\) integer tensor, got \(3,\)"),
        (torch.tensor([[0.0, 1.0]]), r"must hold integers"),
    ],
)
def test_routing_rejects_bad_modality_ids(ids, match):
    """Out-of-range, wrongly shaped or non-integer modality ids fail with a message naming the bad value."""
    with pytest.raises(ValueError, match=match):
        ModalityRouting(ids, 3)


def test_sparse_layer_requires_routing_and_matching_tokens():
    """A sparse layer called without routing, or with routing for another batch, says so."""
    layer = ModalityLinear(4, 4, n_modalities=2)
    with pytest.raises(ValueError, match="pass the batch's routing"):
        layer(torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="input has 6 tokens"):
        layer(torch.randn(2, 3, 4), ModalityRouting(torch.zeros(1, 3, dtype=torch.long), 2))


class _Tiny(nn.Module):
    def __init__(self, m: int) -> None:
        super().__init__()
        self.norm = ModalityRMSNorm(4, m)
        self.proj = ModalityLinear(4, 3, m)
        self.shared = nn.Linear(3, 2)


def test_upcycle_and_export_round_trip():
    """A dense state dict loads into every expert; exporting any expert gives the dense state dict back."""
    dense, sparse = _Tiny(1), _Tiny(3)
    sparse.load_state_dict(upcycle_state_dict(sparse, dense.state_dict()))
    assert sparse.proj.weight.shape == (3, 3, 4)
    for k in range(3):
        exported = expert_state_dict(sparse, k)
        assert exported.keys() == dense.state_dict().keys()
        for key, value in dense.state_dict().items():
            assert torch.equal(exported[key], value), key
    with pytest.raises(ValueError, match=r"expert 3 does not exist"):
        expert_state_dict(sparse, 3)
    with pytest.raises(KeyError, match="missing"):
        upcycle_state_dict(sparse, {"proj.weight": dense.proj.weight})
