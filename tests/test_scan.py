"""Tests for models/scan.py: the fast backends ("torch" and the compiled "cpu" kernel) against the reference loop and
a float64 evaluation, numerics, dtypes, memory layout and dispatch."""

import itertools
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import cpu_kernels, scan
from models.scan import BACKENDS, resolve_backend, selective_scan, selective_scan_ref

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch, dim, dstate, L, *, dtype=torch.float32, seed=0, a_min=-4.0):
    """Random scan inputs (u, delta, A, B, C, D, z, delta_bias) in the shapes selective_scan takes."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    inputs = (
        randn(batch, dim, L),
        0.5 * randn(batch, dim, L),
        a_min * torch.rand(dim, dstate, generator=g, dtype=torch.float64),
        randn(batch, dstate, L),
        randn(batch, dstate, L),
        randn(dim),
        randn(batch, dim, L),
        0.1 * randn(dim),
    )
    return [t.to(dtype) for t in inputs]


def run_with_grads(fn, inputs, use, delta_softplus, seed=1):
    """Run fn on the used inputs (others None), backprop a fixed random cotangent; return (out, {name: grad})."""
    leaves = {k: t.detach().clone().requires_grad_() for k, t in zip(ARG_NAMES, inputs, strict=True) if k in use}
    out = fn(**{k: leaves.get(k) for k in ARG_NAMES}, delta_softplus=delta_softplus)
    # torch.randn(shape) in float32, not randn_like: the cotangent must not depend on the output's strides or dtype.
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    out.backward(cotangent)
    return out.detach(), {k: t.grad for k, t in leaves.items()}


FAST = ("torch", "cpu")


@pytest.fixture(params=FAST)
def fast(request):
    """Each fast backend, called by keyword."""
    return lambda **kwargs: selective_scan(**kwargs, backend=request.param)


OPTIONALS = [
    pytest.param(("D", "z", "delta_bias"), True, id="D-z-bias-softplus"),
    pytest.param((), False, id="plain"),
    pytest.param(("D",), True, id="D-softplus"),
    pytest.param(("z", "delta_bias"), False, id="z-bias"),
]


@pytest.mark.parametrize("L", [1, 7, 64, 257])
@pytest.mark.parametrize(("optional", "softplus"), OPTIONALS)
def test_fast_matches_reference(fast, L, optional, softplus):
    """The torch backend gives the reference's output and the gradient of every input, for odd and long L."""
    inputs = make_inputs(2, 6, 8, L)
    if not softplus:
        inputs[1] = inputs[1].abs()  # a raw negative delta makes exp(delta * A) > 1 and the scan blow up
    use = ("u", "delta", "A", "B", "C", *optional)
    out_ref, grads_ref = run_with_grads(selective_scan_ref, inputs, use, softplus)
    out, grads = run_with_grads(fast, inputs, use, softplus)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=1e-4, atol=1e-4, msg=lambda m, k=k: f"d{k}: {m}")


def test_strided_inputs_and_no_grad(fast):
    """Non-contiguous inputs (transposed views, as a mixer passes them) give the reference's output and grads."""

    def stored_as(t, *order):
        """The same values, held in memory in the given dimension order (a permuted view of a contiguous copy)."""
        inverse = sorted(range(len(order)), key=order.__getitem__)
        return t.permute(*order).contiguous().permute(*inverse)

    u, delta, A, B, C, D, z, delta_bias = make_inputs(2, 5, 4, 19)
    # (B, E, L) views of (B, L, E) memory, like x.transpose(1, 2) in a mixer, and an (E, B, L) one.
    args = [stored_as(u, 0, 2, 1), stored_as(delta, 0, 2, 1), stored_as(A, 1, 0), stored_as(B, 0, 2, 1)]
    args += [C, D, stored_as(z, 1, 0, 2), delta_bias]
    assert not any(t.is_contiguous() for t in (args[0], args[1], args[3], args[6]))
    out_ref, grads_ref = run_with_grads(selective_scan_ref, args, ARG_NAMES, True)
    out, grads = run_with_grads(fast, args, ARG_NAMES, True)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    for k in grads:
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=1e-4, atol=1e-4, msg=lambda m, k=k: f"d{k}: {m}")
    with torch.no_grad():
        torch.testing.assert_close(fast(**dict(zip(ARG_NAMES, args, strict=True)), delta_softplus=True), out_ref)


@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_chunk_boundaries(monkeypatch, fast, chunk):
    """Results do not depend on the chunk length, including chunks that do not divide L."""
    inputs = make_inputs(2, 4, 4, 23, dtype=torch.float64)
    use = ARG_NAMES
    out_ref, grads_ref = run_with_grads(selective_scan_ref, inputs, use, True)
    monkeypatch.setattr(scan, "_chunk_len", lambda L, state_bytes: min(L, chunk))
    monkeypatch.setattr(scan, "CPU_CHUNK", chunk)
    out, grads = run_with_grads(fast, inputs, use, True)
    torch.testing.assert_close(out, out_ref)
    for k in grads:
        torch.testing.assert_close(grads[k], grads_ref[k], msg=lambda m, k=k: f"d{k}: {m}")


@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "raw-delta"])
def test_large_decay_is_finite_and_accurate(fast, softplus):
    """With |delta * A| up to ~16 (A down to -16, delta ~1) both backends stay finite and match float64."""
    inputs = make_inputs(2, 8, 16, 64, a_min=-16.0)
    # delta up to ~1 (after the softplus, or given directly), so delta * A reaches about -16.
    u01 = torch.rand(inputs[1].shape, generator=torch.Generator().manual_seed(3))
    inputs[1] = 3.5 * u01 - 3.0 if softplus else u01
    inputs[2][:, 0] = -16.0
    use = ARG_NAMES
    out64, grads64 = run_with_grads(selective_scan_ref, [t.double() for t in inputs], use, softplus)
    out_ref, grads_ref = run_with_grads(selective_scan_ref, inputs, use, softplus)
    out, grads = run_with_grads(fast, inputs, use, softplus)
    for o, gs in ((out_ref, grads_ref), (out, grads)):
        assert torch.isfinite(o).all() and all(torch.isfinite(g).all() for g in gs.values())
        torch.testing.assert_close(o, out64.float(), rtol=1e-4, atol=1e-4)
        for k in gs:
            torch.testing.assert_close(gs[k], grads64[k].float(), rtol=1e-4, atol=1e-3, msg=lambda m, k=k: f"d{k}: {m}")
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    for k in grads:
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=1e-4, atol=1e-4, msg=lambda m, k=k: f"d{k}: {m}")


def test_bfloat16_inputs(fast):
    """bf16 inputs give a bf16 output close to the float32 result (<= 2e-2 relative) and grads in the input dtypes."""
    inputs = make_inputs(2, 8, 8, 33)
    dtypes = {
        "u": torch.bfloat16,
        "delta": torch.bfloat16,
        "A": torch.float32,
        "B": torch.bfloat16,
        "C": torch.bfloat16,
        "D": torch.float32,
        "z": torch.bfloat16,
        "delta_bias": torch.float32,
    }
    mixed = [t.to(dtypes[k]) for k, t in zip(ARG_NAMES, inputs, strict=True)]
    out, grads = run_with_grads(fast, mixed, ARG_NAMES, True)
    # The float32 result from the same (bf16-rounded) values: the only difference left is the output rounding.
    out32, _ = run_with_grads(fast, [t.float() for t in mixed], ARG_NAMES, True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), out32, rtol=2e-2, atol=2e-2)
    for k, grad in grads.items():
        assert grad.dtype == dtypes[k], k


@pytest.mark.parametrize("backend", FAST)
def test_gradcheck_float64(backend):
    """Float64 gradcheck of each fast backend (custom backward) with every input requiring grad."""
    inputs = [t.requires_grad_() for t in make_inputs(2, 3, 2, 5, dtype=torch.float64)]

    def fn(*args):
        return selective_scan(*args, delta_softplus=True, backend=backend)

    assert torch.autograd.gradcheck(fn, inputs)


def normwise(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative normwise error ||a - b|| / ||b||, in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize(("shape", "truth"), [((2, 6, 16, 1), "ref"), ((2, 6, 16, 7), "ref"),
                                             ((2, 16, 16, 257), "ref"), ((1, 4, 16, 8192), "torch")])  # fmt: skip
def test_cpu_kernel_within_1e5_of_float64(shape, truth):
    """The compiled kernel on float32 inputs: the output and all eight gradients within 1e-5 (relative, normwise) of
    a float64 evaluation of the same inputs (the reference loop; at L = 8192 the float64 torch scan, itself tested
    against it), odd lengths and L = 1 to 8192 included."""
    inputs = make_inputs(*shape, seed=5)
    truth_fn = selective_scan_ref if truth == "ref" else lambda **kw: selective_scan(**kw, backend="torch")
    out64, grads64 = run_with_grads(truth_fn, [t.double() for t in inputs], ARG_NAMES, True)
    out, grads = run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inputs, ARG_NAMES, True)
    assert normwise(out, out64) < 1e-5
    for k in ARG_NAMES:
        if shape[-1] == 1 and k == "A":  # one step from a zero state: dL/dA is exactly 0
            assert not grads[k].any()
            continue
        assert normwise(grads[k], grads64[k]) < 1e-5, k


def test_cpu_kernel_on_bf16_inputs_computes_in_float32():
    """bf16 inputs are computed in float32: the result is the float32 kernel's on the same (rounded) values, rounded
    once at the end, and each gradient (for one bf16 cotangent) is the float32 gradient rounded to its input's dtype."""
    inputs = [t.to(torch.bfloat16) for t in make_inputs(2, 8, 16, 45)]
    cotangent = torch.randn(2, 8, 45, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        leaves = [t.detach().to(dtype).requires_grad_() for t in inputs]
        out = selective_scan(*leaves, delta_softplus=True, backend="cpu")
        out.backward(cotangent.to(dtype))
        results.append((out, [t.grad for t in leaves]))
    (out16, grads16), (out32, grads32) = results
    assert torch.equal(out16, out32.to(torch.bfloat16))
    for name, g16, g32 in zip(ARG_NAMES, grads16, grads32, strict=True):
        assert g16.dtype == torch.bfloat16 and torch.equal(g16, g32.to(torch.bfloat16)), name


def test_cpu_kernel_gives_the_same_bits_on_one_and_two_threads():
    """The kernel splits its work so that every sum has one order: 1 and 2 threads give identical results (a run
    trained alone and one of two single-threaded runs side by side are the same run)."""
    inputs = make_inputs(4, 32, 16, 130)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run_with_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inputs, ARG_NAMES, True))
    finally:
        torch.set_num_threads(threads)
    (out1, g1), (out2, g2) = results
    assert torch.equal(out1, out2) and all(torch.equal(g1[k], g2[k]) for k in ARG_NAMES)


def test_cpu_kernel_keeps_no_full_state_tensor():
    """Memory: for its backward the kernel keeps the chunk-boundary states, ceil(L / CPU_CHUNK) of them, and the
    pre-gate output ([B, E, L]); never the [B, E, N, L] state sequence. (E = 16 fills whole channel groups, so the
    count is exact.)"""
    inputs = [t.requires_grad_() for t in make_inputs(2, 16, 16, 1000)]
    out = selective_scan(*inputs, delta_softplus=True, backend="cpu")
    node, saved = out.grad_fn, []
    while node is not None and not saved:  # the kernel's backward node, behind any casts
        saved = [t for t in getattr(node, "saved_tensors", ()) if isinstance(t, torch.Tensor)]
        node = node.next_functions[0][0] if node.next_functions else None
    state_count = math.ceil(1000 / scan.CPU_CHUNK) * 2 * 16 * 16
    assert state_count in [t.numel() for t in saved]
    assert max(t.numel() for t in saved) < 2 * 16 * 16 * 1000 / 4


def conv_reference(x, weight, bias):
    """The Mamba mixer's torch path: nn.Conv1d's depthwise conv with padding K - 1, first L outputs, then SiLU."""
    E, K = weight.shape
    return torch.nn.functional.silu(torch.nn.functional.conv1d(x, weight[:, None], bias, padding=K - 1, groups=E)
                                    [..., : x.shape[2]])  # fmt: skip


@pytest.mark.parametrize(("B", "E", "L", "K", "bias"), [(2, 20, 7, 4, True), (3, 16, 1, 4, True),
                                                        (2, 37, 50, 3, False), (1, 64, 300, 4, True)])  # fmt: skip
def test_cpu_conv_matches_torch_conv(B, E, L, K, bias):
    """The compiled causal conv + SiLU equals torch's conv1d + SiLU (value and the three gradients): to float64
    rounding in float64, within 1e-6 normwise in float32; on a time-major strided view (half of in_proj's output, as
    the mixer passes it), partial channel groups, L < K and no bias."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, 2 * E, generator=g, dtype=torch.float64)[..., :E].transpose(1, 2)
    weight = torch.randn(E, K, generator=g, dtype=torch.float64)
    b = torch.randn(E, generator=g, dtype=torch.float64) if bias else None
    cotangent = torch.randn(B, E, L, generator=g, dtype=torch.float64)

    def value_and_grads(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (x, weight, b) if t is not None]
        out = fn(*leaves, *([None] if b is None else []))
        return [out, *torch.autograd.grad(out, leaves, cotangent.to(dtype))]

    truth = value_and_grads(conv_reference, torch.float64)
    for got, want in zip(value_and_grads(cpu_kernels.causal_conv1d_silu_cpu, torch.float64), truth, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for got, want in zip(value_and_grads(cpu_kernels.causal_conv1d_silu_cpu, torch.float32), truth, strict=True):
        assert normwise(got, want) < 1e-6


def test_cpu_conv_gives_the_same_bits_on_one_and_two_threads():
    """A task owns a channel group over all rows and steps, so the weight and bias gradients sum in one order."""
    g = torch.Generator().manual_seed(0)
    x, weight, bias = (
        torch.randn(4, 48, 130, generator=g),
        torch.randn(48, 4, generator=g),
        torch.randn(48, generator=g),
    )
    results, threads = [], torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
            out = cpu_kernels.causal_conv1d_silu_cpu(*leaves)
            results.append([out, *torch.autograd.grad(out, leaves, torch.ones_like(out))])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_ref_backend_is_the_reference():
    """backend="ref" is exactly selective_scan_ref."""
    inputs = make_inputs(1, 3, 4, 9)
    torch.testing.assert_close(selective_scan(*inputs, backend="ref"), selective_scan_ref(*inputs), rtol=0, atol=0)


def test_resolve_backend_on_cpu():
    """On a CPU "auto" resolves to the compiled kernel, "cpu" (it builds here: setup.sh installs the compiler), and
    "torch" and "ref" to themselves."""
    cpu = torch.device("cpu")
    assert cpu_kernels.available(), cpu_kernels.load_error()
    assert resolve_backend("auto", cpu) == "cpu"
    assert resolve_backend("torch", cpu) == "torch"
    assert resolve_backend("ref", cpu) == "ref"
    assert set(BACKENDS) == {"auto", "torch", "ref", "cpu", "triton", "cuda"}


def test_a_build_lock_left_by_a_killed_process_does_not_stop_the_next_load(tmp_path):
    """torch's cpp_extension marks a build in progress with a plain file, `lock`, and waits while it exists. A process
    killed while it holds it (a comparison killed as a run starts, Ctrl-C during setup) leaves it behind; the next
    process that loads the kernels must load them all the same, not wait forever."""
    env = os.environ | {"TORCH_EXTENSIONS_DIR": str(tmp_path)}
    where = [sys.executable, "-c", "from models import cpu_kernels; print(cpu_kernels.build_directory())"]
    folder = Path(subprocess.run(where, env=env, capture_output=True, text=True, check=True).stdout.strip())
    assert folder.is_relative_to(tmp_path)
    # the extension as built here, so that the load finds it up to date
    shutil.copytree(cpu_kernels.build_directory(), folder, ignore=shutil.ignore_patterns("lock", "*.lock"))
    (folder / "lock").touch()
    load = [sys.executable, "-c", "from models import cpu_kernels as k; assert k.available(), k.load_error()"]
    try:
        done = subprocess.run(load, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("loading the kernels waited on the stale build lock")
    assert done.returncode == 0, done.stderr


def test_a_kernel_that_does_not_load_falls_back_to_torch(monkeypatch):
    """If the build or the load fails, "auto" uses "torch" and asking for "cpu" says why."""
    monkeypatch.setattr(cpu_kernels, "_load", lambda: (None, "RuntimeError: no compiler"))
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(RuntimeError, match="'cpu' is unavailable .RuntimeError: no compiler.*setup.sh"):
        resolve_backend("cpu", torch.device("cpu"))


def test_unknown_backend_message():
    """An unknown backend raises ValueError naming the bad value and the valid choices."""
    with pytest.raises(ValueError, match="nope") as info:
        resolve_backend("nope", torch.device("cpu"))
    assert all(name in str(info.value) for name in BACKENDS)
    with pytest.raises(ValueError, match="nope"):
        selective_scan(*make_inputs(1, 2, 2, 3)[:5], backend="nope")


@pytest.mark.skipif(torch.cuda.is_available() and scan.mamba_ssm_available(), reason="mamba-ssm CUDA is available")
def test_cuda_backend_unavailable_here():
    """Requesting "cuda" without mamba-ssm or without CUDA tensors raises a RuntimeError that says why."""
    with pytest.raises(RuntimeError) as info:
        selective_scan(*make_inputs(1, 2, 2, 3)[:5], backend="cuda")
    msg = str(info.value)
    if scan.mamba_ssm_available():
        assert "cpu" in msg
    else:
        assert "requirements-gpu.txt" in msg and scan.mamba_ssm_import_error() in msg


@pytest.mark.parametrize(
    ("index", "bad_shape", "name"),
    [
        (1, (2, 4, 6), "delta"),
        (2, (5, 3), "A"),
        (3, (2, 4, 7), "B"),
        (4, (2, 3), "C"),
        (5, (5,), "D"),
        (6, (2, 4, 8), "z"),
        (7, (4, 1), "delta_bias"),
    ],
)
def test_shape_errors_name_the_argument(index, bad_shape, name):
    """A wrongly shaped argument raises ValueError naming it, its expected shape and the shape it got."""
    args = make_inputs(2, 4, 3, 7)
    args[index] = torch.zeros(bad_shape)
    with pytest.raises(ValueError) as info:
        selective_scan(*args)
    msg = str(info.value)
    assert f" {name} must " in msg and "shape (" in msg and str(tuple(bad_shape)) in msg, msg


def test_u_rank_error():
    """u of the wrong rank raises ValueError naming u and the expected (B, E, L) layout."""
    u, *rest = make_inputs(2, 4, 3, 7)
    with pytest.raises(ValueError, match=r"u must have shape \(B, E, L\)"):
        selective_scan(u[0], *rest)


@pytest.mark.gpu
def test_fast_matches_mamba_ssm_on_cuda():
    """On CUDA the torch backend matches mamba-ssm's selective_scan_fn (float32 output and all gradients)."""
    pytest.importorskip("mamba_ssm")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    assert scan.mamba_ssm_available(), scan.mamba_ssm_import_error()
    inputs = [t.cuda() for t in make_inputs(2, 64, 16, 300)]
    for optional, softplus in itertools.product([(), ("D", "z", "delta_bias")], [False, True]):
        use = ("u", "delta", "A", "B", "C", *optional)
        out_ref, grads_ref = run_with_grads(lambda **kw: selective_scan(**kw, backend="cuda"), inputs, use, softplus)
        out, grads = run_with_grads(fast, inputs, use, softplus)
        torch.testing.assert_close(out, out_ref, rtol=6e-4, atol=2e-3)  # mamba-ssm's own float32 tolerance
        for k in grads:
            # Gradients summed over B and L (dA, dD, d delta_bias) are large: compare relative to their scale.
            scale = grads_ref[k].abs().max().item()
            torch.testing.assert_close(
                grads[k], grads_ref[k], rtol=1e-3, atol=1e-3 * scale, msg=lambda m, k=k: f"d{k}: {m}"
            )
