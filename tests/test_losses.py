"""The training loss's cross-entropy: the compiled CPU kernel against torch's, in float64, and its fallback."""

import pytest
import torch
import torch.nn.functional as F

from datamodules.vocab import IGNORE
from experiments.losses import token_cross_entropy
from models import cpu_kernels


def reference(logits: torch.Tensor, targets: torch.Tensor, grad: torch.Tensor):
    """Value and logits-gradient of torch's cross-entropy in float64."""
    x = logits.detach().double().requires_grad_()
    ce = F.cross_entropy(x.flatten(0, -2), targets.flatten(), ignore_index=IGNORE, reduction="none").view_as(targets)
    (ce * grad).sum().backward()
    return ce.detach(), x.grad


def case(dtype: torch.dtype, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(3, 41, vocab, generator=g, dtype=torch.float64) * 4).to(dtype)
    logits[0, 0, : vocab // 2] = -torch.inf  # masked entries (a causal mask's, a forbidden token's)
    logits[1, 1] += 80.0  # large logits: the row's maximum must be subtracted before exp
    targets = torch.randint(0, vocab, (3, 41), generator=g)
    targets[0, 0] = vocab - 1  # a target among the finite logits of the masked row
    targets[:, ::5] = IGNORE
    return logits, targets, torch.randn(3, 41, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("vocab", [2560, 37, 16, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kernel_matches_torch_in_float64(dtype, vocab):
    """Values within float32 rounding of the float64 truth (the logits as given); gradients within their own dtype's
    rounding (bf16 logits get a bf16 gradient, as torch's upcast-and-copy path gives them); 0 at ignored positions."""
    logits, targets, grad = case(dtype, vocab)
    x = logits.clone().requires_grad_()
    ce = cpu_kernels.cross_entropy(x, targets, IGNORE)
    (ce.double() * grad).sum().backward()
    want, want_grad = reference(logits, targets, grad)
    assert ce.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert x.grad.dtype == dtype
    value_tol = 1e-12 if dtype == torch.float64 else 1e-6
    grad_tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    assert (ce.double() - want).norm() <= value_tol * want.norm()
    assert (x.grad.double() - want_grad).norm() <= grad_tol * want_grad.norm()
    assert (ce[targets == IGNORE] == 0).all() and (x.grad[targets == IGNORE] == 0).all()


def test_kernel_is_bit_identical_on_one_and_two_threads():
    logits, targets, grad = case(torch.float32, 2560)
    results = []
    for threads in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            x = logits.clone().requires_grad_()
            ce = cpu_kernels.cross_entropy(x, targets, IGNORE)
            (ce * grad.float()).sum().backward()
        finally:
            torch.set_num_threads(before)
        results.append((ce, x.grad))
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_a_nan_logit_makes_its_position_nan():
    """A diverged model must be seen (the training step stops on a non-finite loss), never hidden by the max."""
    logits, targets, _ = case(torch.float32, 37)
    logits[2, 3, 7] = torch.nan
    targets[2, 3] = 1
    ce = cpu_kernels.cross_entropy(logits, targets, IGNORE)
    assert ce[2, 3].isnan() and ce[2, 2].isfinite()


def test_a_target_outside_the_vocabulary_is_an_error():
    logits, targets, _ = case(torch.float32, 37)
    targets[1, 2] = 37
    with pytest.raises(RuntimeError, match=r"a target is outside \[0, 37\) and is not the ignore index -100"):
        cpu_kernels.cross_entropy(logits, targets, IGNORE)


def test_token_cross_entropy_falls_back_to_torch_without_the_kernel(monkeypatch):
    """Without the compiled kernels the loss is torch's (the same values); with them, the kernel's."""
    logits, targets, _ = case(torch.float32, 37)
    with_kernel = token_cross_entropy(logits, targets)
    monkeypatch.setattr(cpu_kernels, "_load", lambda: (None, "RuntimeError: no compiler"))
    without = token_cross_entropy(logits, targets)
    want, _ = reference(logits, targets, torch.ones_like(targets, dtype=torch.float64))
    torch.testing.assert_close(without.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(with_kernel, without, rtol=1e-6, atol=1e-6)
