"""benchmarks/gpu_check.py --dry-run: the prepared GPU check runs on CPU with tiny shapes and writes every section."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_every_section(tmp_path):
    """The dry run exits 0 and its JSON holds environment, peak, parity (mamba-ssm entries ok or skipped, the
    comparison code checked against our references, Mamba-2's SSD included; the Triton scan, under its interpreter,
    against the torch scan), the scan's forward + backward time per backend with the speed-ups over "torch",
    throughput with step time, tokens/s, MFU and peak memory for 163m and 760m x mamba and mom, and the MoM / dense
    step-time ratios; the log is written."""
    out = tmp_path / "gc"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)]
    env = os.environ | {"TRITON_INTERPRET": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.log").read_text().count("throughput") == 4
    sections = ("environment", "peak", "settings", "parity", "scan_speed", "throughput", "mom_over_mamba_step_time")
    for section in sections:
        assert section in report, section
    assert report["dry_run"] is True
    parity = report["parity"]
    if importlib.util.find_spec("mamba_ssm") is not None and torch.cuda.is_available():
        assert set(parity["selective_scan"]) == {"shape_BENL", "float32", "bfloat16"}
        assert parity["mamba_mixer"]["reference"] == "mamba_ssm.modules.mamba_simple.Mamba"
    else:  # skipped, saying why
        for name in ("selective_scan", "mamba_mixer"):
            assert set(parity[name]) == {"status"}, parity[name]
            reason = parity[name]["status"].removeprefix("skipped: ")
            assert reason != parity[name]["status"] and ("mamba_ssm" in reason or "CUDA" in reason), reason
    for name in ("selective_scan_vs_ref", "mamba_mixer_torch_vs_ref", "ssd_torch_vs_ref"):
        assert parity["code_check"][name]["status"] == "ok", parity["code_check"][name]
        assert "grad_u" in parity["code_check"][name] or "grad_x" in parity["code_check"][name]
    if importlib.util.find_spec("mamba_ssm") is None or not torch.cuda.is_available():  # Mamba-2's kernel: skipped
        assert parity["ssd_scan"]["status"].startswith("skipped: ") and "mamba-ssm" in parity["ssd_scan"]["status"]
    for dtype in ("float32", "bfloat16"):
        assert parity["triton_scan"][dtype]["status"] == "ok", parity["triton_scan"][dtype]
        assert set(parity["triton_scan"][dtype]) >= {"out", "grad_u", "grad_A", "grad_delta_bias"}
    speed = report["scan_speed"]
    for backend in ("torch", "triton"):
        assert speed[backend]["status"] == "ok" and speed[backend]["fwd_bwd_ms"] > 0, speed[backend]
    assert speed["triton"]["speedup_over_torch"] == speed["torch"]["fwd_bwd_ms"] / speed["triton"]["fwd_bwd_ms"]
    assert speed["cuda"]["status"].startswith("skipped: ") and speed["cuda"]["speedup_over_torch"] is None
    keys = {f"{scale}/{arm}" for scale in ("163m", "760m") for arm in ("mamba", "mom")}
    assert set(report["throughput"]) == keys
    for key, row in report["throughput"].items():
        assert row["status"] == "ok", (key, row)
        for field in ("step_time_ms_median", "tokens_per_s", "train_flops_per_token", "achieved_tflops", "mfu",
                      "peak_memory_gib", "scan_backend", "params_total", "params_active"):  # fmt: skip
            assert field in row, (key, field)
        assert row["step_time_ms_median"] > 0 and row["tokens_per_s"] > 0
    assert report["throughput"]["163m/mom"]["params_active"] == report["throughput"]["163m/mamba"]["params_total"]
    assert set(report["mom_over_mamba_step_time"]) == {"163m", "760m"}
    assert all(r > 0 for r in report["mom_over_mamba_step_time"].values())
