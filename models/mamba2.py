"""The Mamba-2 mixer, dense (`mamba2`) and Mixture-of-Mamba-2 (`mom2`) in one class.

Mamba-2: Dao & Gu, arXiv 2405.21060, and state-spaces/mamba `mamba_ssm/modules/mamba2.py` (not `mamba2_simple.py`,
whose gated norm ignores the groups), whose parameter names, shapes and initialisation we keep, so that a dense
mixer's state dict loads into mamba-ssm's `Mamba2` and Hugging Face's `Mamba2Mixer`. Mixture-of-Mamba-2 carries
Mixture-of-Mamba's decoupling (Liang et al., arXiv 2501.16295) to this block: by default in_proj (which here makes
z, x, B, C and dt, what Mamba-1's in_proj, x_proj and dt_proj make), out_proj and dt_bias get one copy per modality;
conv1d, A_log, D and the gated norm stay shared. Every part can be decoupled for the ablation.

Shapes: B batch, L sequence, D d_model, E d_inner (= expand * D), H heads (= E / headdim), P headdim, G ngroups,
N d_state, K d_conv, M n_modalities.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.arms import TWIN_SEED_OFFSET, Arm, register_arm
from models.config import ModelConfig
from models.family import Family, FlopOp
from models.layers import (
    ModalityConv1d,
    ModalityLinear,
    ModalityRMSNorm,
    ModalityRouting,
    as_routing,
    upcast,
    validate_parts,
)
from models.mamba import MambaBlock, _conv_macs
from models.ssd import SSD_BACKENDS, resolve_ssd_backend, ssd_flops, ssd_scan, ssd_step

MAMBA2_PARTS = ("in_proj", "conv1d", "dt_bias", "A_log", "D", "norm", "out_proj")
# The per-head scalars a decoupled mixer stores as [M, H]: each token reads its modality's row.
_HEAD_PARTS = ("dt_bias", "A_log", "D")


class GatedRMSNorm(nn.Module):
    """mamba-ssm's `RMSNormGated` as `Mamba2` uses it (norm_before_gate=False): RMSNorm(y · silu(z)) over groups of
    `group_size` channels, times a scale (E,) — or one scale per modality, [M, E], each token its own modality's."""

    def __init__(self, d: int, group_size: int, n_modalities: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.d, self.group_size, self.n_modalities, self.eps = d, group_size, n_modalities, eps
        self.weight = nn.Parameter(torch.ones(*((n_modalities,) if n_modalities > 1 else ()), d))

    def forward(self, y: Tensor, z: Tensor, routing: ModalityRouting | None = None) -> Tensor:
        """y, z (B, L, E) -> (B, L, E) in y's dtype, computed in at least float32."""
        gated = upcast(y) * F.silu(upcast(z))
        groups = gated.view(*gated.shape[:-1], -1, self.group_size)
        normed = F.rms_norm(groups, (self.group_size,), eps=self.eps).view(gated.shape)
        scale = self.weight if self.n_modalities == 1 else routing.per_token(self.weight)
        return (normed * scale).to(y.dtype)

    def expert_parameters(self) -> dict[str, int]:
        """Its parameters with a leading modality axis (models.layers.expert_parameters)."""
        return {"weight": self.n_modalities} if self.n_modalities > 1 else {}

    def extra_repr(self) -> str:
        return f"{self.d}, group_size={self.group_size}, n_modalities={self.n_modalities}, eps={self.eps}"


class Mamba2Mixer(nn.Module):
    """Mamba-2 (SSD) mixer whose parts can be decoupled per modality.

    in_proj -> [z, xBC, dt]; causal depthwise conv1d over xBC -> SiLU -> [x, B, C]; SSD scan over heads of `headdim`
    channels (Δ = softplus(dt + dt_bias), one A and D per head, B and C per group) -> gated RMSNorm with z ->
    out_proj. With `n_modalities=1` this is mamba-ssm's `Mamba2` (rmsnorm=True, D per head, no d_mlp); with M > 1
    every part named in `decouple` holds one copy per modality and each token uses its modality's copy.

    Args:
        d_model, d_state, expand, headdim, ngroups: D, N, E = expand * D, P and G; E must be a multiple of P and
            H = E / P a multiple of G.
        d_conv, conv_bias: the causal depthwise conv's kernel width and bias.
        chunk_size: the chunked scan's chunk length (models/ssd.py).
        dt_min, dt_max, dt_init_floor: the initial Δ, log-uniform in [dt_min, dt_max] and at least dt_init_floor.
        bias: bias on in_proj and out_proj.
        norm_eps: the gated norm's epsilon.
        n_modalities: M, the number of modality experts of decoupled parts (1 = dense).
        decouple: the parts with per-modality copies; any subset of MAMBA2_PARTS. Ignored when n_modalities == 1.
        scan_backend: one of models.ssd.SSD_BACKENDS.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 256,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        n_modalities: int = 1,
        decouple: Iterable[str] = MAMBA2_PARTS,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if scan_backend not in SSD_BACKENDS:
            raise ValueError(f"unknown scan_backend {scan_backend!r}; valid choices are {list(SSD_BACKENDS)}")
        E = expand * d_model
        if E % headdim or (E // headdim) % ngroups:
            raise ValueError(f"d_inner = expand * d_model = {E} must be a multiple of headdim ({headdim}) and the "
                             f"heads ({E / headdim:g}) a multiple of ngroups ({ngroups})")  # fmt: skip
        self.d_model, self.d_state, self.d_conv, self.d_inner = d_model, d_state, d_conv, E
        self.headdim, self.ngroups, self.nheads, self.chunk_size = headdim, ngroups, E // headdim, chunk_size
        self.n_modalities = n_modalities
        decouple = validate_parts(decouple, MAMBA2_PARTS, "Mamba-2")  # checked even when dense: a typo never passes
        self.decouple = decouple if n_modalities > 1 else ()
        self.scan_backend = scan_backend
        self.last_backend: str | None = None  # the backend the latest forward actually used

        def experts(name: str) -> int:
            return n_modalities if name in self.decouple else 1

        H, G, N = self.nheads, ngroups, d_state
        self.conv_dim = E + 2 * G * N
        self.in_proj = ModalityLinear(d_model, 2 * E + 2 * G * N + H, experts("in_proj"), bias=bias)
        self.conv1d = ModalityConv1d(self.conv_dim, d_conv, experts("conv1d"), bias=conv_bias)

        def per_head(name: str, values: Tensor) -> nn.Parameter:  # (H,) dense, [M, H] decoupled
            return nn.Parameter(values[0] if experts(name) == 1 else values)

        # Δ's bias: the inverse softplus of a log-uniform draw in [dt_min, dt_max]; A in [1, 16] (mamba-ssm's
        # A_init_range), kept as log and in float32. Each expert of a decoupled part draws its own.
        dt = torch.exp(torch.rand(experts("dt_bias"), H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = per_head("dt_bias", dt + torch.log(-torch.expm1(-dt)))
        self.dt_bias._no_reinit = True  # model-level init must not zero it like other biases
        self.A_log = per_head("A_log", torch.log(torch.empty(experts("A_log"), H).uniform_(1, 16)))
        self.D = per_head("D", torch.ones(experts("D"), H))
        self.norm = GatedRMSNorm(E, E // ngroups, experts("norm"), eps=norm_eps)
        self.out_proj = ModalityLinear(E, d_model, experts("out_proj"), bias=bias)

    def _head_values(self, routing: ModalityRouting | None) -> tuple[Tensor, Tensor, Tensor]:
        """A = -exp(A_log), D and dt_bias, each (H,), or (B, L, H) for a decoupled one (each token its modality's),
        in at least float32."""
        values = {"A_log": -torch.exp(upcast(self.A_log)), "D": upcast(self.D), "dt_bias": upcast(self.dt_bias)}
        for name in self.decouple:
            if name in _HEAD_PARTS:
                values[name] = routing.per_token(values[name])
        return values["A_log"], values["D"], values["dt_bias"]

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """in_proj's output (..., 2E + 2GN + H) -> z (..., E), xBC (..., E + 2GN), dt (..., H)."""
        z, xBC, dt = zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        return z, xBC, dt

    def forward(self, x: Tensor, modality_ids: Tensor | ModalityRouting | None = None) -> Tensor:
        """x (B, L, D), modality_ids (B, L) or a prebuilt ModalityRouting (None when dense) -> (B, L, D)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"Mamba2Mixer expects x of shape (B, L, {self.d_model}), got {tuple(x.shape)}")
        routing = as_routing(modality_ids, self.n_modalities)
        batch, seqlen, _ = x.shape
        backend = resolve_ssd_backend(self.scan_backend, x.device, x.dtype)
        self.last_backend = backend

        z, xBC, dt = self._split(self.in_proj(x, routing))
        xBC = self.conv1d(xBC.transpose(1, 2), routing, silu=True).transpose(1, 2)
        xs, Bm, Cm = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        A, D, dt_bias = self._head_values(routing)
        groups = (batch, seqlen, self.ngroups, self.d_state)
        y = ssd_scan(
            xs.reshape(batch, seqlen, self.nheads, self.headdim), dt, A, Bm.reshape(groups), Cm.reshape(groups),
            self.chunk_size, D=D, dt_bias=dt_bias, dt_softplus=True, backend=backend,
        )  # fmt: skip
        y = self.norm(y.reshape(batch, seqlen, self.d_inner), z, routing)
        return self.out_proj(y, routing)

    def allocate_inference_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Zero states for `step`: (conv_state (B, E + 2GN, d_conv), ssm_state (B, H, P, N)); the SSM state is kept
        in at least float32, as the scan computes."""
        weight = self.conv1d.weight
        conv = weight.new_zeros(batch_size, self.conv_dim, self.d_conv, dtype=dtype or weight.dtype)
        ssm = weight.new_zeros(batch_size, self.nheads, self.headdim, self.d_state, dtype=upcast(self.A_log).dtype)
        return conv, ssm

    def step(
        self, x: Tensor, modality_ids: Tensor | ModalityRouting | None, conv_state: Tensor, ssm_state: Tensor
    ) -> Tensor:
        """One new token per sequence, mamba-ssm's `Mamba2.step`: x (B, 1, D), modality_ids (B, 1) -> (B, 1, D),
        routed by that token's modality; conv_state and ssm_state advance in place."""
        routing = as_routing(modality_ids, self.n_modalities)
        z, xBC, dt = self._split(self.in_proj(x, routing)[:, 0])
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = xBC
        xBC = F.silu(self.conv1d.step(conv_state, routing))
        xs, Bm, Cm = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        A, D, dt_bias = (v[:, 0] if v.dim() == 3 else v for v in self._head_values(routing))
        batch, groups = x.shape[0], (x.shape[0], self.ngroups, self.d_state)
        y = ssd_step(ssm_state, xs.reshape(batch, self.nheads, self.headdim), dt, A, Bm.reshape(groups),
                     Cm.reshape(groups), D=D, dt_bias=dt_bias, dt_softplus=True)  # fmt: skip
        return self.out_proj(self.norm(y.reshape(batch, 1, self.d_inner), z[:, None], routing), routing)

    def expert_parameters(self) -> dict[str, int]:
        """Its own per-head parameters with a leading modality axis (models.layers.expert_parameters)."""
        return {name: self.n_modalities for name in _HEAD_PARTS if name in self.decouple}

    def extra_repr(self) -> str:
        return (f"heads={self.nheads}x{self.headdim}, ngroups={self.ngroups}, n_modalities={self.n_modalities}, "
                f"decouple={list(self.decouple)}, scan_backend={self.scan_backend!r}")  # fmt: skip


class Mamba2Block(MambaBlock):
    """x + mixer(RMSNorm(x)): mamba-ssm's block (pre-norm, shared norm) around a Mamba-2 mixer; its forward and
    generation cache are the Mamba block's (`MambaCache`: here a conv window (B, E + 2GN, d_conv) and the SSM state
    (B, H, P, N))."""

    def __init__(self, cfg: ModelConfig) -> None:
        nn.Module.__init__(self)
        self.norm = ModalityRMSNorm(cfg.d_model, eps=cfg.norm_eps)
        # The mixer's other arguments are the ModelConfig fields of the same names.
        same = "d_state d_conv expand headdim ngroups chunk_size dt_min dt_max dt_init_floor conv_bias bias"
        same += " scan_backend"
        kwargs = {name: getattr(cfg, name) for name in same.split()}
        n_modalities = cfg.n_modalities if cfg.is_sparse else 1
        self.mixer = Mamba2Mixer(cfg.d_model, norm_eps=cfg.norm_eps, n_modalities=n_modalities,
                                 decouple=cfg.decouple, **kwargs)  # fmt: skip


class Mamba2Family(Family[ModelConfig]):
    """Mamba-2 blocks; two per transformer-layer equivalent, as the Mamba family, so that the dense arms of one scale
    have about the same parameters."""

    name = "mamba2"
    parts = MAMBA2_PARTS
    blocks_per_layer = 2
    ablation_groups = (("in_proj", "out_proj"), ("dt_bias", "A_log", "D"))
    recurrent = True
    cpu_step_cost = 2.2  # a tiny Mamba-2 step against a tiny transformer step on the CPU (bench_step.py)
    hf_class = "Mamba2ForCausalLM"
    # mamba-ssm's Mamba-2 configs at the paper scales (state 128, headdim 64, expand 2); the widths are the Mamba
    # family's and the depths match dense Mamba's active parameters (docs/papers.md, "Presets").
    scales = {
        "nano": dict(d_model=64, n_layer=2, vocab_size=4096, d_state=64, headdim=32, chunk_size=64),
        "tiny": dict(d_model=128, n_layer=2, vocab_size=4096, d_state=64, headdim=64, chunk_size=64),
        "mini": dict(d_model=256, n_layer=2, vocab_size=4096, d_state=64, headdim=64, chunk_size=64),
        "small": dict(d_model=256, n_layer=4, vocab_size=8192, d_state=64, headdim=64, chunk_size=64),
        "163m": dict(d_model=768, n_layer=15, vocab_size=32000, d_state=128, headdim=64, chunk_size=256),
        "760m": dict(d_model=1536, n_layer=22, vocab_size=32000, d_state=128, headdim=64, chunk_size=256),
        "1.4b": dict(d_model=2048, n_layer=24, vocab_size=32000, d_state=128, headdim=64, chunk_size=256),
    }

    def __init__(self) -> None:
        self.flop_ops = {
            # torch.jit traces a torch.autograd.Function as "prim::PythonOp.<class name>": the whole scan, one op
            "prim::PythonOp._SSDChunkedFn": FlopOp("ssd_scan", self._ssd_macs),
            "aten::_convolution": FlopOp("conv", _conv_macs),
        }
        self._traced_chunk: int | None = None  # the chunk length of the model being traced (`traceable`)

    def _ssd_macs(self, shapes: list) -> float:
        """One SSD scan, `_SSDChunkedFn(x (B, L, H, P), dt, A, B (B, L, G, N), C, D, dt_bias, chunk, softplus)`:
        `ssd_flops` of its shapes, in MACs. The chunk length is no tensor, so the traced model's config gives it."""
        (batch, seqlen, heads, headdim), (_, _, groups, state) = shapes[0], shapes[3]
        return ssd_flops(batch, seqlen, heads, headdim, state, groups, self._traced_chunk) / 2

    @contextmanager
    def traceable(self, model: nn.Module) -> Iterator[None]:
        """Every mixer on the "torch" scan (traced as one op, models/ssd.py), its chunk length known to the handle."""
        mixers = [m for m in model.modules() if isinstance(m, Mamba2Mixer)]
        backends = [m.scan_backend for m in mixers]
        self._traced_chunk = model.cfg.chunk_size
        try:
            for m in mixers:
                m.scan_backend = "torch"
            yield
        finally:
            self._traced_chunk = None
            for m, backend in zip(mixers, backends, strict=True):
                m.scan_backend = backend

    def check(self, cfg: ModelConfig) -> None:
        if cfg.scan_backend not in SSD_BACKENDS:
            raise ValueError(f"unknown scan_backend {cfg.scan_backend!r} for a Mamba-2 arm; valid choices are "
                             f"{list(SSD_BACKENDS)}")  # fmt: skip
        if cfg.d_inner % cfg.headdim:
            raise ValueError(f"d_inner = expand * d_model = {cfg.d_inner} must be a multiple of headdim {cfg.headdim}")
        if (cfg.d_inner // cfg.headdim) % cfg.ngroups:
            raise ValueError(f"the heads (d_inner / headdim = {cfg.d_inner // cfg.headdim}) must be a multiple of "
                             f"ngroups {cfg.ngroups}")  # fmt: skip

    def block(self, cfg: ModelConfig) -> nn.Module:
        return Mamba2Block(cfg)

    @torch.no_grad()
    def init_block(self, block: nn.Module, cfg: ModelConfig) -> None:
        """nn.Linear's default for the projections (mamba-ssm), out_proj rescaled by 1/sqrt(n_block): the residual
        branch's rescaling."""
        block.mixer.out_proj.weight.div_(math.sqrt(cfg.n_block))

    def block_params(self, cfg: ModelConfig) -> tuple[dict[str, int], int]:
        d, E, N, G, K = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.ngroups, cfg.d_conv
        H, conv_dim = E // cfg.headdim, E + 2 * G * N
        d_proj = 2 * E + 2 * G * N + H
        parts = {
            "in_proj": d * d_proj + (d_proj if cfg.bias else 0),
            "conv1d": conv_dim * K + (conv_dim if cfg.conv_bias else 0),
            "dt_bias": H,
            "A_log": H,
            "D": H,
            "norm": E,
            "out_proj": E * d + (d if cfg.bias else 0),
        }
        return parts, d  # the block's pre-norm is never decoupled

    def block_flops(self, cfg: ModelConfig, seq_len: int) -> dict[str, float]:
        d, E, N, G, P = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.ngroups, cfg.headdim
        convs = cfg.n_modalities if "conv1d" in cfg.decouple else 1  # a decoupled conv runs every kernel
        return {
            "matmul": 2 * (d * (2 * E + 2 * G * N + E // P) + E * d),  # in_proj, out_proj
            "conv": convs * 2 * cfg.d_conv * (E + 2 * G * N),
            "scan": ssd_flops(1, seq_len, E // P, P, N, G, cfg.chunk_size) / seq_len,
        }

    def backend(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> str:
        return resolve_ssd_backend(cfg.scan_backend, device, dtype)


MAMBA2 = Mamba2Family()
register_arm(Arm("mamba2", MAMBA2, "Mamba-2", "tab:olive"))
register_arm(Arm("mom2", MAMBA2, "MoM-2", "tab:brown", dense="mamba2", routing="modality",
                 decouple=("in_proj", "dt_bias", "out_proj")))  # fmt: skip
register_arm(Arm("mom2_hash", MAMBA2, "MoM-2-pos-hash", "plum", dense="mamba2", routing="position_hash",
                 decouple=("in_proj", "dt_bias", "out_proj")))  # fmt: skip
register_arm(Arm("mom2_idhash", MAMBA2, "MoM-2-id-hash", "paleturquoise", dense="mamba2", routing="token_hash",
                 decouple=("in_proj", "dt_bias", "out_proj")))  # fmt: skip
register_arm(Arm("mamba2_twin", MAMBA2, "Mamba-2 twin", "darkkhaki", dense="mamba2",
                 config={"init_seed_offset": TWIN_SEED_OFFSET}))  # fmt: skip
