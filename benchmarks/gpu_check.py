"""The prepared GPU check: kernel parity, step time, tokens/s, MFU and peak memory of dense Mamba vs MoM.

    python benchmarks/gpu_check.py --out results/gpu_check          # one CUDA GPU; under 8 minutes on an H200
    python benchmarks/gpu_check.py --dry-run --out benchmarks/out/gpu_check   # CPU, tiny shapes, seconds (tested)

Writes <out>/gpu_check.json and <out>/gpu_check.log. Sections of the JSON:

  environment   torch / CUDA / device / mamba-ssm and causal-conv1d versions (or why they do not import)
  peak          the bf16 dense peak the MFU divides by, and its source
  parity        selective_scan: the project's "torch" scan vs mamba-ssm's selective_scan_fn (output and the
                gradients of all eight inputs, float32 and bf16); triton_scan: the "triton" backend vs the "torch"
                scan, the same comparisons; mamba_mixer: the dense MambaMixer (torch, triton and cuda backends) vs
                mamba-ssm's `Mamba` holding the same state dict (output, input and weight gradients). Entries whose
                kernel cannot run say "skipped: <why>". code_check runs the same comparison code
                against the project's own references (torch scan vs `selective_scan_ref`, mixer on "torch" vs
                "ref"), so the comparison itself is exercised everywhere, --dry-run included. ssd_scan: Mamba-2's
                chunked "torch" SSD vs mamba-ssm's `mamba_chunk_scan_combined` (output and the gradients of all seven
                inputs, float32 and bf16; its code_check: against the sequential `ssd_ref`).
  scan_speed    forward + backward time of the scan alone at the 163m mixer's shape (bf16 inputs), per backend
                that runs here ("torch", "triton", "cuda"), and each one's speed-up over "torch"
  throughput    per scale (163m, 760m) and arm (mamba, mom): training steps on synthetic interleaved batches
                (two modalities, bf16 autocast, AdamW, gradient clipping): median step time, tokens/s, achieved
                FLOP/s from the analytic FLOPs per token (analysis/flops.py), MFU, peak memory, scan backend
  mom_over_mamba_step_time   per scale: the MoM step time over the dense Mamba step time (routing overhead)

MFU = analytic training FLOPs per token x tokens per second / peak. The peak is the H100/H200 SXM bf16 *dense*
tensor-core figure, 989.4 TFLOP/s (NVIDIA's datasheets print 1,979 TFLOP/s "with sparsity"; Lightning's FLOPs
table lists that sparse figure for the H200, which would halve the MFU). Other GPUs: pass --peak-tflops.

A configuration that runs out of memory or time is recorded as such and the rest still runs. Each configuration
measures --steps steps after --warmup steps, or as many as fit in --budget-s; the whole run stops starting new
configurations after --total-budget-s.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from analysis.flops import flops_per_token
from models import ModelConfig, build_model
from models.mamba import MambaMixer
from models.scan import mamba_ssm_available, mamba_ssm_import_error, resolve_backend, selective_scan, selective_scan_ref
from models.ssd import resolve_ssd_backend, ssd_ref, ssd_scan

ROOT = Path(__file__).resolve().parents[1]

H100_H200_BF16_DENSE_PEAK = 989.4e12  # FLOP/s, NVIDIA H100/H200 SXM datasheets (1,979e12 with 2:4 sparsity)
SCALES = ("163m", "760m")
ARMS = ("mamba", "mom")
VOCAB, MODALITIES = 32000, 2  # Transfusion's vocabulary; text + image tokens (discrete, Chameleon-style)
# Tiny shapes for --dry-run: the same code on CPU in seconds.
DRY_MODEL = dict(d_model=32, n_layer=1, d_state=8, vocab_size=256)
LOG = logging.getLogger("gpu_check")


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Normwise relative error max|ours - ref| / max|ref| (0 when both are 0), in float64."""
    ours, ref = ours.detach().double(), ref.detach().double()
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    diff = float((ours - ref).abs().max()) if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff


def import_error(module: str) -> str | None:
    """None if `module` imports, else '<ExceptionType>: <message>'."""
    try:
        __import__(module)
    except Exception as exc:  # a broken CUDA build fails with ImportError, OSError or RuntimeError alike
        return f"{type(exc).__name__}: {exc}"
    return None


def version_of(module: str) -> str | None:
    try:
        return getattr(__import__(module), "__version__", "unknown")
    except Exception:
        return None


def interleaved_ids(batch: int, seqlen: int, mean_run: int, generator: torch.Generator) -> torch.Tensor:
    """(B, L) ids of two modalities in runs of random length (packed interleaved documents), about 40% image."""
    ids = torch.empty(batch, seqlen, dtype=torch.long)
    for b in range(batch):
        pos = 0
        while pos < seqlen:
            run = int(torch.randint(1, 2 * mean_run, (1,), generator=generator))
            ids[b, pos : pos + run] = int(torch.rand((), generator=generator) < 0.4)
            pos += run
    return ids


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------------------
# parity
# ----------------------------------------------------------------------------------------------------------------------


def scan_inputs(batch: int, d_inner: int, d_state: int, seqlen: int, device: torch.device, dtype: torch.dtype):
    """Inputs as MambaMixer produces them: dt pre-activations around softplus^-1 of [1e-3, 1e-1], A = -(1..N)."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dt)

    dt = torch.exp(torch.rand(d_inner, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return dict(
        u=rand(batch, d_inner, seqlen),
        delta=rand(batch, d_inner, seqlen, scale=0.5),
        A=-torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1).to(device),
        B=rand(batch, d_state, seqlen),
        C=rand(batch, d_state, seqlen),
        D=torch.ones(d_inner, device=device),
        z=rand(batch, d_inner, seqlen),
        delta_bias=(dt + torch.log(-torch.expm1(-dt))).to(device),  # inverse softplus
    )


def compare_scan(other, inputs: dict, tol: float) -> dict:
    """The project's "torch" scan vs `other` (same signature): output and every input's gradient."""
    results = {}
    outs, grads = [], []
    for fn in (lambda **kw: selective_scan(**kw, backend="torch"), other):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        y = fn(**leaves, delta_softplus=True)
        cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
        y.backward(cot)
        outs.append(y)
        grads.append({k: v.grad for k, v in leaves.items()})
    results["out"] = rel_err(outs[0], outs[1])
    for k in inputs:
        results[f"grad_{k}"] = rel_err(grads[0][k], grads[1][k])
    worst = max(results.values())
    return {"status": "ok" if worst <= tol else "mismatch", "tolerance": tol, "worst_rel_err": worst, **results}


def ssd_inputs(batch: int, seqlen: int, heads: int, headdim: int, groups: int, d_state: int, device, dtype) -> dict:
    """Inputs of an SSD scan as a Mamba-2 mixer makes them: x, dt, B, C in `dtype`; A, D, dt_bias per head."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(device)

    A = -torch.empty(heads).uniform_(1, 16, generator=g).to(device)
    return {"x": rand(batch, seqlen, heads, headdim).to(dtype), "dt": rand(batch, seqlen, heads).to(dtype), "A": A,
            "B": rand(batch, seqlen, groups, d_state).to(dtype), "C": rand(batch, seqlen, groups, d_state).to(dtype),
            "D": rand(heads), "dt_bias": rand(heads, scale=0.5) - 4}  # fmt: skip


def compare_ssd(other, inputs: dict, chunk: int, tol: float) -> dict:
    """The project's chunked "torch" SSD vs `other` (ssd_scan's arguments): output and every input's gradient."""
    outs, grads = [], []
    for fn in (lambda **kw: ssd_scan(**kw, backend="torch"), other):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        y = fn(**leaves, chunk_size=chunk, dt_softplus=True)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y))
        outs.append(y)
        grads.append({k: v.grad for k, v in leaves.items()})
    results = {"out": rel_err(outs[0], outs[1])} | {f"grad_{k}": rel_err(grads[0][k], grads[1][k]) for k in inputs}
    worst = max(results.values())
    return {"status": "ok" if worst <= tol else "mismatch", "tolerance": tol, "worst_rel_err": worst, **results}


def compare_mixers(ours: torch.nn.Module, other: torch.nn.Module, x: torch.Tensor, tol: float) -> dict:
    """Two mixers holding the same state dict: output, input gradient and every weight gradient."""
    other.load_state_dict(ours.state_dict(), strict=True)  # same keys and shapes by design (docs/design.md)
    cot = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x)
    outs, xgrads, wgrads = [], [], []
    for m in (ours, other):
        m.zero_grad(set_to_none=True)
        xi = x.detach().clone().requires_grad_()
        y = m(xi)
        y.backward(cot)
        outs.append(y)
        xgrads.append(xi.grad)
        wgrads.append({n: p.grad for n, p in m.named_parameters()})
    results = {"out": rel_err(outs[0], outs[1]), "grad_x": rel_err(xgrads[0], xgrads[1])}
    for name, g in wgrads[0].items():
        results[f"grad_{name}"] = rel_err(g, wgrads[1][name])
    worst = max(results.values())
    return {"status": "ok" if worst <= tol else "mismatch", "tolerance": tol, "worst_rel_err": worst, **results}


def guarded(fn, *args, **kwargs) -> dict:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        LOG.info(traceback.format_exc())
        return {"status": f"error: {type(exc).__name__}: {exc}"}


def backend_missing(backend: str, device: torch.device) -> str | None:
    """Why the scan backend cannot run on ``device``, or None when it can."""
    try:
        resolve_backend(backend, device)
    except RuntimeError as exc:
        return str(exc)
    return None


def parity(device: torch.device, dry_run: bool) -> dict:
    """Project kernels vs mamba-ssm's and Triton's (each skipped where it cannot run), and the same comparisons
    against our own references."""
    B, E, N, L = (1, 8, 4, 16) if dry_run else (2, 1536, 16, 2048)
    d_model, mix_len = (8, 16) if dry_run else (768, 1024)
    out: dict = {}

    def scan_parity(other) -> dict:
        return {
            "shape_BENL": [B, E, N, L],
            "float32": guarded(compare_scan, other, scan_inputs(B, E, N, L, device, torch.float32), 1e-3),
            "bfloat16": guarded(compare_scan, other, scan_inputs(B, E, N, L, device, torch.bfloat16), 3e-2),
        }

    triton_missing = backend_missing("triton", device)
    out["triton_scan"] = (
        {"status": f"skipped: {triton_missing}"}
        if triton_missing
        else scan_parity(lambda **kw: selective_scan(**kw, backend="triton"))
    )
    missing = mamba_ssm_import_error() if not mamba_ssm_available() else None
    if missing is None and device.type != "cuda":
        missing = "mamba-ssm's kernels need a CUDA device"
    if missing:
        out["selective_scan"] = {"status": f"skipped: {missing}"}
        out["mamba_mixer"] = {"status": f"skipped: {missing}"}
    else:
        from mamba_ssm.modules.mamba_simple import Mamba
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        out["selective_scan"] = scan_parity(selective_scan_fn)
        x = torch.randn(2, mix_len, d_model, device=device)
        mixer = {"d_model": d_model, "seq_len": mix_len, "reference": "mamba_ssm.modules.mamba_simple.Mamba"}
        for backend in ("torch", "triton", "cuda"):
            if backend_missing(backend, device):
                continue
            torch.manual_seed(0)
            ours = MambaMixer(d_model, scan_backend=backend).to(device)
            theirs = Mamba(d_model=d_model, d_state=16, d_conv=4, expand=2).to(device)
            mixer[f"ours_{backend}_backend"] = guarded(compare_mixers, ours, theirs, x, 1e-3)
        out["mamba_mixer"] = mixer
    # Mamba-2's SSD: B, L, H, P, G, N and the chunk of a 163m Mamba-2 mixer (a dry run: tiny).
    shape = (1, 40, 2, 4, 1, 8, 16) if dry_run else (2, 2048, 24, 64, 1, 128, 256)
    try:
        resolve_ssd_backend("cuda", device)
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        def chunk_scan(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus):
            return mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus)

        out["ssd_scan"] = {"shape_BLHPGN_chunk": list(shape)} | {
            name: guarded(compare_ssd, chunk_scan, ssd_inputs(*shape[:6], device, dtype), shape[6], tol)
            for name, dtype, tol in (("float32", torch.float32, 1e-3), ("bfloat16", torch.bfloat16, 3e-2))
        }
    except RuntimeError as exc:
        out["ssd_scan"] = {"status": f"skipped: {exc}"}
    # The comparison code against the project's references: runs everywhere, so a dry run exercises it.
    small = dict(B=1, E=8, N=4, L=33) if dry_run else dict(B=2, E=64, N=16, L=256)
    inputs = scan_inputs(small["B"], small["E"], small["N"], small["L"], device, torch.float32)
    torch.manual_seed(0)
    ours = MambaMixer(d_model, scan_backend="torch").to(device)
    ref = MambaMixer(d_model, scan_backend="ref").to(device)
    x = torch.randn(1, 33 if dry_run else 256, d_model, device=device)
    out["code_check"] = {
        "selective_scan_vs_ref": guarded(compare_scan, selective_scan_ref, inputs, 1e-4),
        "mamba_mixer_torch_vs_ref": guarded(compare_mixers, ours, ref, x, 1e-4),
        "ssd_torch_vs_ref": guarded(compare_ssd, lambda chunk_size, **kw: ssd_ref(**kw),
                                    ssd_inputs(1, 40, 2, 4, 1, 8, device, torch.float32), 16, 1e-4),  # fmt: skip
    }
    return out


def time_scan(backend: str, inputs: dict, device: torch.device, repeats: int) -> float:
    """Median seconds of one forward + backward of the scan on ``backend`` (after one untimed call)."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    cot = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1)).to(inputs["u"])
    times = []
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        selective_scan(**leaves, delta_softplus=True, backend=backend).backward(cot)
        sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scan_speed(device: torch.device, dry_run: bool) -> dict:
    """The scan alone, forward + backward, per backend that runs here, at the 163m mixer's shape in bf16."""
    B, E, N, L = (1, 8, 4, 33) if dry_run else (4, 1536, 16, 4096)
    inputs = scan_inputs(B, E, N, L, device, torch.bfloat16)
    result: dict = {"shape_BENL": [B, E, N, L], "dtype": "bfloat16"}
    for backend in ("torch", "triton", "cuda"):
        missing = backend_missing(backend, device)
        if missing:
            result[backend] = {"status": f"skipped: {missing}"}
        else:
            result[backend] = guarded(
                lambda b=backend: {"status": "ok", "fwd_bwd_ms": 1e3 * time_scan(b, inputs, device, 3)}
            )
    base = result["torch"].get("fwd_bwd_ms")
    for backend in ("triton", "cuda"):
        ms = result[backend].get("fwd_bwd_ms")
        result[backend]["speedup_over_torch"] = base / ms if base and ms else None
    return result


# ----------------------------------------------------------------------------------------------------------------------
# throughput
# ----------------------------------------------------------------------------------------------------------------------


def train_steps(scale: str, arm: str, args, device: torch.device, peak: float | None) -> dict:
    """Warm-up then timed training steps of one (scale, arm) on synthetic interleaved batches."""
    overrides = DRY_MODEL if args.dry_run else {"vocab_size": VOCAB}
    cfg = ModelConfig.from_scale(scale, arch=arm, n_modalities=MODALITIES, **overrides)
    model = build_model(cfg, device=device)
    total, active = model.param_count()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    B, L = args.batch, args.seq_len
    tokens = torch.randint(0, cfg.vocab_size, (B, L), generator=g).to(device)
    modality_ids = interleaved_ids(B, L, args.mean_run, g).to(device)
    targets = torch.roll(tokens, -1, dims=1)
    per_token = flops_per_token(cfg, L)  # analytic training FLOPs per token (3 x forward)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(tokens, modality_ids).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < args.steps and (time.perf_counter() - start < args.budget_s or len(times) < 2):
        t0 = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    tokens_per_s = B * L / median
    achieved = per_token * tokens_per_s
    result = {
        "status": "ok" if len(times) == args.steps else f"ok: time budget, {len(times)} of {args.steps} steps",
        "params_total": total,
        "params_active": active,
        "scan_backend": model.backend,
        "causal_conv1d": model.backend in ("cuda", "triton") and import_error("causal_conv1d") is None,
        "batch": B,
        "seq_len": L,
        "steps_timed": len(times),
        "step_time_ms_median": 1e3 * median,
        "step_time_ms_min": 1e3 * min(times),
        "tokens_per_s": tokens_per_s,
        "train_flops_per_token": per_token,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "final_loss": float(loss),
    }
    if args.dry_run:
        result["dry_run_overrides"] = DRY_MODEL
    return result


# ----------------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "gpu_count": torch.cuda.device_count(),
    }
    for module in ("mamba_ssm", "causal_conv1d", "triton"):
        error = import_error(module)
        env[module] = version_of(module) if error is None else f"not importable: {error}"
    env["selective_scan_cuda"] = mamba_ssm_available() or mamba_ssm_import_error()
    return env


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gpu_check")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, seconds: checks the script runs")
    parser.add_argument("--scales", default=",".join(SCALES))
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 4; dry run 2)")
    parser.add_argument("--seq-len", type=int, default=None, help="default 4096, the papers' length (dry run 64)")
    parser.add_argument("--mean-run", type=int, default=None, help="mean tokens per modality run (default 256)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 30)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5)")
    parser.add_argument("--budget-s", type=float, default=75.0, help="timed seconds per configuration at most")
    parser.add_argument("--total-budget-s", type=float, default=420.0, help="no new configuration after this")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the GPU (MFU)")
    args = parser.parse_args(argv)
    dry = dict(batch=2, seq_len=64, mean_run=8, steps=3, warmup=1)
    full = dict(batch=4, seq_len=4096, mean_run=256, steps=30, warmup=5)
    for key, value in (dry if args.dry_run else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    args.out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(args.out / "gpu_check.log", mode="w")
    handlers = [handler, logging.StreamHandler()]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=handlers, force=True)
    began = time.perf_counter()
    if args.dry_run:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --dry-run to check the script on CPU")
    else:
        device = torch.device("cuda")
    name = environment(device)["device"]
    if args.peak_tflops:
        peak, source = args.peak_tflops * 1e12, "--peak-tflops"
    elif device.type == "cuda" and any(chip in name for chip in ("H100", "H200")):
        peak, source = H100_H200_BF16_DENSE_PEAK, "H100/H200 SXM bf16 dense tensor-core peak (datasheet, no sparsity)"
    else:
        peak, source = None, "unknown for this device: pass --peak-tflops (MFU left null)"

    report: dict = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "dry_run": args.dry_run,
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(device),
        "peak": {"bf16_dense_flops": peak, "source": source},
        "settings": {k: getattr(args, k) for k in ("batch", "seq_len", "mean_run", "steps", "warmup", "budget_s")},
    }
    LOG.info("gpu_check on %s (dry run: %s): %s", name, args.dry_run, json.dumps(report["environment"]))

    report["parity"] = parity(device, args.dry_run)
    for key, value in report["parity"].items():
        LOG.info("parity %s: %s", key, json.dumps(value))

    report["scan_speed"] = guarded(scan_speed, device, args.dry_run)
    LOG.info("scan_speed: %s", json.dumps(report["scan_speed"]))

    report["throughput"] = {}
    for scale in args.scales.split(","):
        for arm in ARMS:
            key = f"{scale}/{arm}"
            if time.perf_counter() - began > args.total_budget_s:
                report["throughput"][key] = {"status": f"skipped: total budget of {args.total_budget_s:.0f} s spent"}
            else:
                report["throughput"][key] = guarded(train_steps, scale, arm, args, device, peak)
                if device.type == "cuda":
                    torch.cuda.empty_cache()  # the model and optimiser state of this configuration are gone
            LOG.info("throughput %s: %s", key, json.dumps(report["throughput"][key]))
    ratios = {}
    for scale in args.scales.split(","):
        dense, sparse = report["throughput"][f"{scale}/mamba"], report["throughput"][f"{scale}/mom"]
        if "step_time_ms_median" in dense and "step_time_ms_median" in sparse:
            ratios[scale] = sparse["step_time_ms_median"] / dense["step_time_ms_median"]
        else:
            ratios[scale] = None
    report["mom_over_mamba_step_time"] = ratios
    report["duration_s"] = time.perf_counter() - began
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    LOG.info("MoM / dense step time: %s; %.0f s in all; wrote %s", ratios, report["duration_s"], args.out)
    return report


if __name__ == "__main__":
    main()
