"""Tests for models/triton_scan.py, the "triton" selective-scan backend, run on CPU tensors under Triton's interpreter
against the float64 reference loop; and for how models/scan.py detects mamba-ssm's kernel and picks a backend."""

import os
import sys
import types

import pytest
import torch

from models import scan
from models.mamba import MambaMixer
from models.scan import resolve_backend, selective_scan, selective_scan_ref
from tests.test_scan import ARG_NAMES, OPTIONALS, make_inputs, run_with_grads

pytest.importorskip("triton")

from models.triton_scan import CHUNK  # noqa: E402

# tests/conftest.py switches the interpreter on wherever CUDA is absent; on a CUDA machine the kernel is checked on
# the GPU by benchmarks/gpu_check.py.
interpreted = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="Triton's interpreter is off")


def triton_scan(**kwargs):
    return selective_scan(**kwargs, backend="triton")


def reference(**kwargs):
    """The reference loop in float64, whatever the inputs' dtype: the truth the kernel is held to."""
    return selective_scan_ref(**{k: v if v is None or k == "delta_softplus" else v.double() for k, v in kwargs.items()})


def compare(inputs, optional, softplus, rtol, atol, grad_tol=None):
    """Output within (rtol, atol) of the float64 reference, every gradient within grad_tol (default the same)."""
    if not softplus:
        inputs[1] = inputs[1].abs()  # a raw negative delta makes exp(delta * A) > 1 and the scan blow up
    use = ("u", "delta", "A", "B", "C", *optional)
    out, grads = run_with_grads(triton_scan, inputs, use, softplus)
    want_out, want_grads = run_with_grads(reference, inputs, use, softplus)
    assert out.dtype == inputs[0].dtype
    torch.testing.assert_close(out.double(), want_out, rtol=rtol, atol=atol)
    assert set(grads) == set(use)
    for name in use:
        assert grads[name].dtype == inputs[ARG_NAMES.index(name)].dtype, name
        tol = grad_tol or rtol
        torch.testing.assert_close(
            grads[name].double(), want_grads[name].double(), rtol=tol, atol=tol, msg=lambda m, k=name: f"d{k}: {m}"
        )


@interpreted
@pytest.mark.parametrize(("optional", "softplus"), OPTIONALS)
def test_float32_output_and_all_gradients_match_the_reference(optional, softplus):
    """Output and the eight gradients, with and without D, z, delta_bias and softplus, over a length that is not a
    multiple of the chunk (the last chunk is partial) and more channels than one program's block."""
    L = 2 * CHUNK + 5
    compare(make_inputs(2, 11, 5, L), optional, softplus, rtol=1e-5, atol=1e-5, grad_tol=1e-4)


@interpreted
def test_float64_matches_the_reference_to_rounding():
    """In float64 the kernel computes in float64: agreement to rounding shows the algorithm, not luck of precision."""
    inputs = make_inputs(2, 9, 4, CHUNK + 3, dtype=torch.float64)
    compare(inputs, ("D", "z", "delta_bias"), True, rtol=1e-12, atol=1e-12)


@interpreted
@pytest.mark.parametrize("L", [1, CHUNK, 3 * CHUNK])
def test_lengths_at_chunk_edges(L):
    compare(make_inputs(1, 8, 3, L, seed=L), ("D", "z", "delta_bias"), True, rtol=1e-5, atol=1e-5, grad_tol=1e-4)


@interpreted
def test_strided_inputs():
    """(B, E, L) views of (B, L, E) memory, as a mixer passes them, give the same output and gradients."""
    inputs = make_inputs(2, 9, 4, CHUNK + 2)
    for i in (0, 1, 3, 4, 6):
        inputs[i] = inputs[i].transpose(1, 2).contiguous().transpose(1, 2)
    assert not inputs[0].is_contiguous()
    compare(inputs, ("D", "z", "delta_bias"), True, rtol=1e-5, atol=1e-5, grad_tol=1e-4)


@interpreted
def test_bfloat16_inputs_compute_in_float32():
    """bf16 inputs: the state and arithmetic are float32, so the error is the inputs' and output's rounding alone."""
    inputs = make_inputs(2, 8, 4, CHUNK + 7, dtype=torch.bfloat16)
    use = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    out, grads = run_with_grads(triton_scan, inputs, use, True)
    want_out, want_grads = run_with_grads(reference, inputs, use, True)
    assert out.dtype == torch.bfloat16 and all(grads[k].dtype == torch.bfloat16 for k in use)
    scale = want_out.abs().max()
    assert (out.double() - want_out).abs().max() <= 2e-2 * scale
    for name in use:
        assert (grads[name].double() - want_grads[name]).abs().max() <= 2e-2 * want_grads[name].abs().max(), name


@interpreted
def test_gradients_are_deterministic():
    """No atomics: two backward passes give bitwise equal gradients."""
    inputs = make_inputs(3, 17, 4, 2 * CHUNK + 1)
    use = ARG_NAMES
    first = run_with_grads(triton_scan, inputs, use, True)[1]
    second = run_with_grads(triton_scan, inputs, use, True)[1]
    for name in use:
        assert torch.equal(first[name], second[name]), name


@interpreted
def test_a_mamba_mixer_on_the_triton_backend_equals_the_torch_backend():
    torch.manual_seed(0)
    mixer = MambaMixer(d_model=16, d_state=4, scan_backend="torch")
    x = torch.randn(2, CHUNK + 9, 16, requires_grad=True)
    want = mixer(x)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    mixer.scan_backend = "triton"
    got = mixer(x)
    (got_grad,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-5)


@interpreted
def test_triton_on_cpu_tensors_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", "cpu")


@pytest.fixture
def mamba_ssm_without_its_extension(monkeypatch):
    """mamba-ssm as its main branch installs without MAMBA_KEEP_CUDA_BUILD: the interface module imports, with
    `selective_scan_cuda = None`, and its `selective_scan_fn` raises at the first call."""

    def selective_scan_fn(*args, **kwargs):
        raise RuntimeError("selective_scan_cuda is not installed")

    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_cuda, interface.selective_scan_fn = None, selective_scan_fn
    ops = types.ModuleType("mamba_ssm.ops")
    ops.selective_scan_interface = interface
    package = types.ModuleType("mamba_ssm")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "mamba_ssm", package)
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops", ops)
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", interface)
    scan._import_mamba_ssm.cache_clear()
    yield interface
    scan._import_mamba_ssm.cache_clear()


def test_mamba_ssm_without_its_extension_is_not_taken_for_the_kernel(mamba_ssm_without_its_extension, monkeypatch):
    """`selective_scan_fn` importing is not enough: "auto" on CUDA falls back to Triton (or torch without it), and
    asking for "cuda" says what is missing and how to install it."""
    assert not scan.mamba_ssm_available()
    assert "selective_scan_cuda" in scan.mamba_ssm_import_error()
    assert resolve_backend("auto", "cuda") == "triton"
    monkeypatch.setattr(scan, "triton_available", lambda: False)
    assert resolve_backend("auto", "cuda") == "torch"
    with pytest.raises(RuntimeError, match="MAMBA_KEEP_CUDA_BUILD=TRUE"):
        resolve_backend("cuda", "cuda")


def test_mamba_ssm_with_its_extension_is_picked_on_cuda(mamba_ssm_without_its_extension):
    mamba_ssm_without_its_extension.selective_scan_cuda = types.ModuleType("selective_scan_cuda")
    scan._import_mamba_ssm.cache_clear()
    assert scan.mamba_ssm_available()
    assert resolve_backend("auto", "cuda") == "cuda"
    assert resolve_backend("auto", "cuda", torch.float64) == "triton"
