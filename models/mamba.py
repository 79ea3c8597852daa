"""The Mamba-1 mixer, dense (`mamba`) and Mixture-of-Mamba (`mom`) in one class.

Mamba: Gu & Dao, arXiv 2312.00752, and state-spaces/mamba `mamba_ssm/modules/mamba_simple.py`, whose names and
initialisation we keep so a dense mixer's state dict loads into mamba-ssm's `Mamba` and Hugging Face's
`MambaMixer` and back. Mixture-of-Mamba: Liang et al., arXiv 2501.16295: in_proj, x_proj, dt_proj and out_proj
get one copy per modality (any subset, for the ablation); conv1d, A_log and D stay shared.

Shapes: B batch, L sequence, D d_model, E d_inner (= expand * D), N d_state, R dt_rank, M n_modalities.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import cpu_kernels
from models.arms import TWIN_SEED_OFFSET, Arm, register_arm
from models.config import ModelConfig
from models.family import Family, FlopOp
from models.layers import (
    ModalityLinear,
    ModalityRMSNorm,
    ModalityRouting,
    as_routing,
    autocast_input,
    upcast,
    validate_parts,
)
from models.scan import BACKENDS, resolve_backend, scan_flops, selective_scan, selective_state_update

MAMBA_PARTS = ("in_proj", "x_proj", "dt_proj", "out_proj")


@lru_cache(maxsize=1)
def _causal_conv1d_fn():
    """causal-conv1d's CUDA kernel, or None where it does not import (always on CPU-only machines)."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        return None
    return causal_conv1d_fn


class MambaMixer(nn.Module):
    """Selective-SSM mixer (Mamba-1) whose projections can be decoupled per modality.

    in_proj -> causal depthwise conv1d -> SiLU -> x_proj -> dt_proj -> selective scan (D skip, SiLU(z) gate)
    -> out_proj. With `n_modalities=1` this is mamba-ssm's `Mamba` (same parameter names and shapes); with M > 1
    every projection named in `decouple` holds `[M, ...]` weights and routes each token to its modality's copy.

    The dt bias is always applied, whether dt_proj is shared or decoupled. The official MoM code drops it when
    dt_proj is shared (it calls the scan with `delta_bias=None` after a weight-only matmul); we do not reproduce
    that, so a sparse mixer whose experts hold identical weights equals the dense mixer exactly.

    Args:
        d_model, d_state, expand: model width D, SSM state size N, E = expand * D.
        d_conv, conv_bias: the causal depthwise conv's kernel width and bias.
        dt_rank: rank R of the Δ projection; "auto" is ceil(D / 16).
        dt_min, dt_max, dt_init_floor: the initial Δ, log-uniform in [dt_min, dt_max] and at least dt_init_floor.
        dt_init, dt_scale: dt_proj.weight's initialisation, "random" (uniform ±R^-0.5·dt_scale) or "constant".
        bias: bias on in_proj and out_proj.
        n_modalities: M, the number of modality experts for decoupled projections (1 = dense).
        decouple: the projections that get per-modality copies; any subset of MAMBA_PARTS (default: all four).
            Ignored when n_modalities == 1.
        scan_backend: one of models.scan.BACKENDS.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        n_modalities: int = 1,
        decouple: Iterable[str] = MAMBA_PARTS,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if scan_backend not in BACKENDS:
            raise ValueError(f"unknown scan_backend {scan_backend!r}; valid choices are {list(BACKENDS)}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"unknown dt_init {dt_init!r}; valid choices are ['random', 'constant']")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.n_modalities = n_modalities
        decouple = validate_parts(decouple, MAMBA_PARTS, "Mamba")  # checked even when dense: a typo never passes
        self.decouple = decouple if n_modalities > 1 else ()
        self.scan_backend = scan_backend
        self.last_backend: str | None = None  # the backend the latest forward actually used

        def proj(name: str, d_in: int, d_out: int, has_bias: bool) -> ModalityLinear:
            return ModalityLinear(d_in, d_out, n_modalities if name in self.decouple else 1, bias=has_bias)

        E, N, R = self.d_inner, d_state, self.dt_rank
        self.in_proj = proj("in_proj", d_model, 2 * E, bias)
        # Shared across modalities: a token's conv window spans its neighbours, whatever their modality.
        self.conv1d = nn.Conv1d(E, E, kernel_size=d_conv, groups=E, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = proj("x_proj", E, R + 2 * N, False)
        self.dt_proj = proj("dt_proj", R, E, True)
        self.out_proj = proj("out_proj", E, d_model, bias)

        # S4D-real initialisation, A = -[1..N] for every channel; kept as log and in float32 (exp(Δ·A) underflows
        # and loses precision in bf16). Shared across modalities, as in the MoM paper.
        A = torch.arange(1, N + 1, dtype=torch.float32).repeat(E, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(E))
        self._init_dt(dt_init, dt_scale, dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_dt(self, dt_init: str, dt_scale: float, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        """mamba-ssm's Δ initialisation, applied to each expert of a decoupled dt_proj independently."""
        std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        bias = self.dt_proj.bias
        dt = torch.exp(torch.rand(bias.shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        # Inverse softplus, so that softplus(bias) = dt lies in [dt_min, dt_max] at initialisation.
        bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        bias._no_reinit = True  # model-level init must not zero it like other biases

    def forward(self, x: Tensor, modality_ids: Tensor | ModalityRouting | None = None) -> Tensor:
        """x (B, L, D), modality_ids (B, L) or a prebuilt ModalityRouting (None when dense) -> (B, L, D)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"MambaMixer expects x of shape (B, L, {self.d_model}), got {tuple(x.shape)}")
        routing = as_routing(modality_ids, self.n_modalities)
        batch, seqlen, _ = x.shape
        backend = resolve_backend(self.scan_backend, x.device, x.dtype)
        self.last_backend = backend

        xz = self.in_proj(x, routing).transpose(1, 2)  # (B, 2E, L)
        xs, z = xz.chunk(2, dim=1)  # (B, E, L) each
        xs = self._conv(xs, seqlen, backend)

        # x_proj and dt_proj are per-token, so a decoupled pair shares one sort and one unsort of the tokens.
        R, N = self.dt_rank, self.d_state
        rows = routing.sort(autocast_input(xs.transpose(1, 2))) if routing is not None else xs.transpose(1, 2)
        x_dbl = self.x_proj.forward_sorted(rows, routing)  # (.., R + 2N)
        # dt_proj in at least float32 with its bias: it is tiny (R = D/16), and softplus(W·r + b) with b ≈ -4 is
        # sensitive to bf16 rounding; mamba-ssm likewise adds the dt bias in float32 inside its kernel.
        with torch.autocast(device_type=x.device.type, enabled=False):
            dt = self.dt_proj.forward_sorted(upcast(x_dbl[..., :R]), routing)  # (.., E)
        BC = x_dbl[..., R:]
        if routing is not None:
            dt, BC = routing.unsort(dt), routing.unsort(BC)
        Bm, Cm = BC.transpose(1, 2).split([N, N], dim=1)  # (B, N, L) each

        A = -torch.exp(upcast(self.A_log))  # (E, N)
        # No delta_bias: the dt bias is inside dt already (see above).
        y = selective_scan(
            xs, dt.transpose(1, 2), A, Bm, Cm, D=upcast(self.D), z=z, delta_softplus=True, backend=backend
        )  # (B, E, L)
        return self.out_proj(y.transpose(1, 2), routing)  # (B, L, D)

    def allocate_inference_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """mamba-ssm's name: zero states for `step`, (conv_state (B, E, d_conv), ssm_state (B, E, N)); the SSM state is
        kept in at least float32, as the scan computes."""
        weight = self.conv1d.weight
        conv = weight.new_zeros(batch_size, self.d_inner, self.d_conv, dtype=dtype or weight.dtype)
        ssm = weight.new_zeros(batch_size, self.d_inner, self.d_state, dtype=upcast(self.A_log).dtype)
        return conv, ssm

    def step(
        self, x: Tensor, modality_ids: Tensor | ModalityRouting | None, conv_state: Tensor, ssm_state: Tensor
    ) -> Tensor:
        """One new token per sequence, mamba-ssm's `Mamba.step`: x (B, 1, D), modality_ids (B, 1) -> (B, 1, D), routed
        by that token's modality; conv_state and ssm_state advance in place."""
        routing = as_routing(modality_ids, self.n_modalities)
        xs, z = self.in_proj(x, routing)[:, 0].chunk(2, dim=-1)  # (B, E) each
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = xs
        xs = (conv_state * self.conv1d.weight[:, 0]).sum(-1)
        xs = F.silu(xs if self.conv1d.bias is None else xs + self.conv1d.bias)
        R, N = self.dt_rank, self.d_state
        x_dbl = self.x_proj(xs[:, None], routing)
        with torch.autocast(device_type=x.device.type, enabled=False):  # as in forward
            dt = self.dt_proj(upcast(x_dbl[..., :R]), routing)[:, 0]  # (B, E), bias included
        Bm, Cm = x_dbl[:, 0, R:].split([N, N], dim=-1)
        A = -torch.exp(upcast(self.A_log))
        y = selective_state_update(ssm_state, xs, dt, A, Bm, Cm, D=upcast(self.D), z=z, dt_softplus=True)
        return self.out_proj(y[:, None], routing)

    def _conv(self, xs: Tensor, seqlen: int, backend: str) -> Tensor:
        """Causal depthwise conv over time, then SiLU: (B, E, L) -> (B, E, L)."""
        conv_fn = _causal_conv1d_fn() if backend in ("cuda", "triton") else None
        if conv_fn is not None:
            return conv_fn(xs, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        if backend == "cpu":
            # The compiled kernel reads in_proj's time-major output as it is and writes time-major, so x_proj and
            # the scan read it without copies (torch's conv1d would copy in and out of channel-major). Under bf16
            # autocast it runs in float32, as the scan does.
            return cpu_kernels.causal_conv1d_silu_cpu(upcast(xs), self.conv1d.weight.squeeze(1), self.conv1d.bias)
        # padding = d_conv - 1 on both sides; keeping the first L outputs makes it causal.
        return F.silu(self.conv1d(xs)[..., :seqlen])

    def extra_repr(self) -> str:
        return f"n_modalities={self.n_modalities}, decouple={list(self.decouple)}, scan_backend={self.scan_backend!r}"


class MambaBlock(nn.Module):
    """x + mixer(RMSNorm(x)): mamba-ssm's block (pre-norm, shared norm)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = ModalityRMSNorm(cfg.d_model, eps=cfg.norm_eps)
        # The mixer's other arguments are the ModelConfig fields of the same names.
        same = "d_state d_conv expand dt_rank dt_min dt_max dt_init dt_scale dt_init_floor conv_bias bias scan_backend"
        n_modalities = cfg.n_modalities if cfg.is_sparse else 1
        kwargs = {name: getattr(cfg, name) for name in same.split()}
        self.mixer = MambaMixer(cfg.d_model, n_modalities=n_modalities, decouple=cfg.decouple, **kwargs)

    def forward(self, x: Tensor, routing: ModalityRouting | None, cache: MambaCache | None = None) -> Tensor:
        """x (B, L, D) -> (B, L, D). With a `cache` the L tokens continue the cached sequences, one recurrent step
        each (generation: a prompt, then a token at a time)."""
        if cache is None:
            return x + self.mixer(self.norm(x), routing)
        ids = routing.modality_ids if routing is not None else None
        steps = [
            self.mixer.step(self.norm(x[:, t : t + 1]), None if ids is None else ids[:, t : t + 1], *cache)
            for t in range(x.shape[1])
        ]
        return x + torch.cat(steps, dim=1)

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None):
        return MambaCache(*self.mixer.allocate_inference_cache(batch_size, dtype))


class MambaCache(NamedTuple):
    """A Mamba block's generation state: the conv window (B, E, d_conv) and the SSM state (B, E, N) (a Mamba-2
    block's: (B, E + 2GN, d_conv) and (B, H, P, N))."""

    conv_state: Tensor
    ssm_state: Tensor


def _scan_macs(shapes: list) -> float:
    """One selective scan: `scan_flops` of its u (B, E, L) and A (E, N), in MACs."""
    (batch, d_inner, seq_len), d_state = shapes[0], shapes[2][1]
    return scan_flops(batch, d_inner, seq_len, d_state) / 2


def _conv_macs(shapes: list) -> int:
    """The depthwise causal conv, x (B, E, L) and weight (E, 1, d_conv): one output per input position. The mixer's
    nn.Conv1d pads d_conv - 1 on both sides and keeps the first L outputs; the discarded ones are not counted."""
    (batch, _, length), weight = shapes[0], shapes[1]
    return batch * length * math.prod(weight)


class MambaFamily(Family[ModelConfig]):
    """Mamba-1 blocks; two per transformer-layer equivalent (mamba-ssm's convention: two Mamba blocks replace
    attention + MLP), so the dense arms of one scale have about the same parameters."""

    name = "mamba"
    parts = MAMBA_PARTS
    blocks_per_layer = 2
    ablation_groups = (("in_proj", "out_proj"), ("x_proj", "dt_proj"))
    recurrent = True
    cpu_step_cost = 1.3  # a tiny Mamba step against a tiny transformer step on the CPU (bench_step.py)
    hf_class = "MambaForCausalLM"
    # n_layer counts transformer-layer equivalents. At 163m and 760m, 30 and 44 blocks (not 2 per layer, which would
    # overshoot the names by 4% and 7%) keep dense Mamba within 3% of the name; docs/papers.md derives the widths.
    scales = {
        "nano": dict(d_model=64, n_layer=2, vocab_size=4096),
        "tiny": dict(d_model=128, n_layer=2, vocab_size=4096),
        "mini": dict(d_model=256, n_layer=2, vocab_size=4096),
        "small": dict(d_model=256, n_layer=4, vocab_size=8192),
        "163m": dict(d_model=768, n_layer=15, vocab_size=32000),
        "760m": dict(d_model=1536, n_layer=22, vocab_size=32000),
        "1.4b": dict(d_model=2048, n_layer=24, vocab_size=32000),
    }

    flop_ops = {
        # torch.jit traces a torch.autograd.Function as "prim::PythonOp.<class name>": the whole scan, one op
        "prim::PythonOp._SelectiveScanFn": FlopOp("selective_scan", _scan_macs),
        "aten::_convolution": FlopOp("conv", _conv_macs),
    }

    @contextmanager
    def traceable(self, model: nn.Module) -> Iterator[None]:
        """Every mixer on the "torch" scan: one traced op (the "ref" backend would trace as L copies of its per-step
        einsum, and the compiled ones are opaque to the tracer)."""
        mixers = [m for m in model.modules() if isinstance(m, MambaMixer)]
        backends = [m.scan_backend for m in mixers]
        try:
            for m in mixers:
                m.scan_backend = "torch"
            yield
        finally:
            for m, backend in zip(mixers, backends, strict=True):
                m.scan_backend = backend

    def check(self, cfg: ModelConfig) -> None:
        if cfg.scan_backend not in BACKENDS:
            raise ValueError(f"unknown scan_backend {cfg.scan_backend!r}; valid choices are {list(BACKENDS)}")
        if cfg.dt_rank != "auto" and (not isinstance(cfg.dt_rank, int) or cfg.dt_rank < 1):
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got {cfg.dt_rank!r}")

    def block(self, cfg: ModelConfig) -> nn.Module:
        return MambaBlock(cfg)

    @torch.no_grad()
    def init_block(self, block: nn.Module, cfg: ModelConfig) -> None:
        """nn.Linear's default for the projections (mamba-ssm), out_proj rescaled by 1/sqrt(n_block): the residual
        branch's rescaling."""
        for name, module in block.named_modules():
            if isinstance(module, ModalityLinear) and name.endswith("out_proj"):
                module.weight.div_(math.sqrt(cfg.n_block))

    def block_params(self, cfg: ModelConfig) -> tuple[dict[str, int], int]:
        d, E, N, R, K = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank_value, cfg.d_conv
        parts = {
            "in_proj": d * 2 * E + (2 * E if cfg.bias else 0),
            "x_proj": E * (R + 2 * N),
            "dt_proj": R * E + E,
            "out_proj": E * d + (d if cfg.bias else 0),
        }
        shared = d + E * K + (E if cfg.conv_bias else 0) + E * N + E  # norm, conv1d, A_log, D
        return parts, shared

    def block_flops(self, cfg: ModelConfig, seq_len: int) -> dict[str, int]:
        d, E, N, R = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank_value
        return {
            "matmul": 2 * (d * 2 * E + E * (R + 2 * N) + R * E + E * d),  # in_proj, x_proj, dt_proj, out_proj
            "conv": 2 * cfg.d_conv * E,  # the depthwise causal conv's kept outputs
            "scan": scan_flops(1, E, 1, N),
        }

    def backend(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> str:
        return resolve_backend(cfg.scan_backend, device, dtype)


MAMBA = MambaFamily()
register_arm(Arm("mamba", MAMBA, "Mamba", "tab:blue", default=True))
register_arm(Arm("mom", MAMBA, "MoM", "tab:orange", dense="mamba", routing="modality", default=True))
register_arm(Arm("mom_hash", MAMBA, "MoM-pos-hash", "tab:purple", dense="mamba", routing="position_hash"))
register_arm(Arm("mom_idhash", MAMBA, "MoM-id-hash", "tab:cyan", dense="mamba", routing="token_hash"))
register_arm(Arm("mamba_twin", MAMBA, "Mamba twin", "lightsteelblue", dense="mamba",
                 config={"init_seed_offset": TWIN_SEED_OFFSET}))  # fmt: skip
