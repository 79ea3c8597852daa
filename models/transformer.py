"""The transformer block, dense (`transformer`) and Mixture-of-Transformers (`mot`) in one class.

The block of the released MoT code (Liang et al., arXiv 2411.04996), which is Chameleon's: each sublayer's RMSNorm is
applied to its output, x + norm(f(x)) (Chameleon's norm reordering), queries and keys are RMS-normalised per head
(QK-norm) before rotary position embeddings (Llama / Hugging Face's rotate-half convention), attention runs through
`scaled_dot_product_attention`, and the MLP is a SwiGLU. Mixture-of-Transformers unties Wq, Wk, Wv, Wo, the MLP and
every norm (QK-norms included) per modality while attention itself runs over the whole sequence; which parts are
untied is the `decouple` field (any subset of TRANSFORMER_PARTS). The dense transformer is the same block with one
modality. `norm_placement="pre"` without QK-norm is the Llama block (the `*_prenorm` arms).

Attention is causal; with an `attn_mask` it is whatever the mask allows (Transfusion: bidirectional within an image,
`models.layers.image_attention_mask`).

Shapes: B batch, L sequence, D d_model, H heads, K head_dim (= D / H), F mlp hidden, M n_modalities.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.arms import TWIN_SEED_OFFSET, Arm, register_arm
from models.config import ModelConfig
from models.family import Family, FlopOp
from models.layers import ModalityLinear, ModalityRMSNorm, ModalityRouting, upcast, validate_parts

TRANSFORMER_PARTS = ("wq", "wk", "wv", "wo", "mlp", "norm")
NORM_PLACEMENTS = ("pre", "post")  # pre: x + f(norm(x)); post: x + norm(f(x)), MoT's / Chameleon's "SwinNorm"


def mlp_hidden(d_model: int, multiple_of: int) -> int:
    """SwiGLU hidden width: 2/3 of 4·D rounded up to a multiple (lingua / MoT's convention)."""
    return multiple_of * -(-(8 * d_model // 3) // multiple_of)


def rotary_cos_sin(
    seqlen: int, head_dim: int, theta: float, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """cos and sin tables (L, K) for rotary embeddings, in `dtype` (float32, or float64 for a float64 model)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=dtype) / head_dim)
    angles = torch.outer(torch.arange(seqlen, device=device, dtype=dtype), inv_freq)  # (L, K/2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, K): the rotate-half layout
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, L, K) queries or keys by position; computed in at least float32, returned in x's dtype."""
    xf = upcast(x)
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def check_heads(d_model: int, n_head: int) -> None:
    """ValueError unless the heads split the width evenly."""
    if d_model % n_head:
        raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention, causal unless a mask says otherwise; Wq/Wk/Wv/Wo (and the QK-norms) per modality
    when decoupled, attention always global."""

    def __init__(
        self,
        d_model: int,
        n_head: int,
        n_modalities: int = 1,
        decouple: Iterable[str] = (),
        rope_theta: float = 1e4,
        qk_norm: bool = True,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        check_heads(d_model, n_head)
        self.d_model, self.n_head, self.head_dim, self.rope_theta = d_model, n_head, d_model // n_head, rope_theta
        decouple = set(decouple)
        for name in ("wq", "wk", "wv", "wo"):
            m = n_modalities if name in decouple else 1
            setattr(self, name, ModalityLinear(d_model, d_model, m, bias=False))
        n_norm = n_modalities if "norm" in decouple else 1
        self.q_norm = ModalityRMSNorm(self.head_dim, n_norm, eps=norm_eps) if qk_norm else None
        self.k_norm = ModalityRMSNorm(self.head_dim, n_norm, eps=norm_eps) if qk_norm else None

    def forward(
        self, x: Tensor, routing: ModalityRouting | None, attn_mask: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """x (B, L, D), attn_mask (B, 1, L, L) bool or None (causal) -> (B, L, D). With a `cache` the L tokens
        continue the cached sequences: their keys and values are appended and they attend to all of them, causally
        unless `attn_mask` (B, 1, L, start + L) says otherwise."""
        batch, seqlen, _ = x.shape
        projections = (self.wq, self.wk, self.wv)
        if routing is not None and any(p.n_modalities > 1 for p in projections):
            # q, k and v read the same tokens: one sort and one unsort for all three.
            rows = routing.sort(x)
            qkv = routing.unsort(torch.cat([p.forward_sorted(rows, routing) for p in projections], dim=-1))
        else:
            qkv = torch.cat([p(x) for p in projections], dim=-1)
        q, k, v = (t.view(batch, seqlen, self.n_head, self.head_dim) for t in qkv.chunk(3, dim=-1))  # (B, L, H, K)
        if self.q_norm is not None:
            q, k = self.q_norm(q, routing), self.k_norm(k, routing)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, K)
        start = 0 if cache is None else cache.length
        cos, sin = rotary_cos_sin(start + seqlen, self.head_dim, self.rope_theta, x.device, upcast(q).dtype)
        q, k = apply_rotary(q, cos[start:], sin[start:]), apply_rotary(k, cos[start:], sin[start:])
        if cache is not None:
            k, v = cache.append(k, v)
            if attn_mask is None:  # new token i sits at start + i and sees the keys up to it
                attn_mask = torch.ones(seqlen, start + seqlen, dtype=torch.bool, device=x.device).tril(start)
        # torch's CPU attention is slower in bf16 than in float32 (benchmarks/README.md, "Precision"), so on the CPU
        # it runs in float32 also under bf16 autocast; on GPUs in the autocast dtype.
        cpu = x.device.type == "cpu"
        if cpu:
            q, k, v = upcast(q), upcast(k), upcast(v)
        with torch.autocast("cpu", enabled=False) if cpu else contextlib.nullcontext():
            if attn_mask is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, K)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.wo(y.transpose(1, 2).reshape(batch, seqlen, self.d_model), routing)


@dataclass
class KVCache:
    """An attention layer's keys and values of the sequences so far, (B, H, max_seqlen, K) each, filled to `length`."""

    k: Tensor
    v: Tensor
    length: int = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new keys and values (B, H, T, K); return all of them so far."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"the cache holds {self.k.shape[2]} positions; {end} were asked for")
        self.k[:, :, self.length : end], self.v[:, :, self.length : end] = k, v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), one copy per modality when decoupled."""

    def __init__(self, d_model: int, hidden: int, n_modalities: int = 1) -> None:
        super().__init__()
        self.w1 = ModalityLinear(d_model, hidden, n_modalities, bias=False)
        self.w3 = ModalityLinear(d_model, hidden, n_modalities, bias=False)
        self.w2 = ModalityLinear(hidden, d_model, n_modalities, bias=False)

    def forward(self, x: Tensor, routing: ModalityRouting | None) -> Tensor:
        """x (B, L, D) -> (B, L, D). A per-modality MLP runs entirely on tokens sorted by modality."""
        if routing is None or self.w1.n_modalities == 1:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        rows = routing.sort(x)
        hidden = F.silu(self.w1.forward_sorted(rows, routing)) * self.w3.forward_sorted(rows, routing)
        return routing.unsort(self.w2.forward_sorted(hidden, routing))


class TransformerBlock(nn.Module):
    """Attention then MLP, each in a residual with an RMSNorm placed as `norm_placement` says.

    Args:
        d_model, n_head: width and heads.
        mlp_hidden: SwiGLU hidden width.
        n_modalities: M (1 = dense).
        decouple: parts with per-modality copies, a subset of TRANSFORMER_PARTS; ignored when M == 1.
        norm_placement: "post" (x + norm(f(x)), MoT's and Chameleon's, the default) or "pre" (x + f(norm(x))).
        qk_norm: RMS-normalise queries and keys per head before the rotary embedding (MoT, Chameleon).
        norm_eps, rope_theta: RMSNorm epsilon and rotary base.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        mlp_hidden: int,
        n_modalities: int = 1,
        decouple: Iterable[str] = TRANSFORMER_PARTS,
        norm_placement: str = "post",
        qk_norm: bool = True,
        norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
    ) -> None:
        super().__init__()
        if norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"unknown norm_placement {norm_placement!r}; valid choices are {list(NORM_PLACEMENTS)}")
        decouple = validate_parts(decouple, TRANSFORMER_PARTS, "transformer")  # checked even when dense
        decouple = decouple if n_modalities > 1 else ()
        self.norm_placement, self.decouple = norm_placement, decouple
        n_norm = n_modalities if "norm" in decouple else 1
        self.attn_norm = ModalityRMSNorm(d_model, n_norm, eps=norm_eps)
        self.attn = CausalSelfAttention(d_model, n_head, n_modalities, decouple, rope_theta, qk_norm, norm_eps)
        self.mlp_norm = ModalityRMSNorm(d_model, n_norm, eps=norm_eps)
        self.mlp = SwiGLU(d_model, mlp_hidden, n_modalities if "mlp" in decouple else 1)

    def forward(
        self, x: Tensor, routing: ModalityRouting | None, attn_mask: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """x (B, L, D), attn_mask (B, 1, L, L) bool or None (causal) -> (B, L, D); a `cache` continues the cached
        sequences (generation)."""
        attn = functools.partial(self.attn, attn_mask=attn_mask, cache=cache)
        for norm, sublayer in ((self.attn_norm, attn), (self.mlp_norm, self.mlp)):
            if self.norm_placement == "pre":
                x = x + sublayer(norm(x, routing), routing)
            else:
                x = x + norm(sublayer(x, routing), routing)
        return x

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None) -> KVCache:
        weight = self.attn.wq.weight
        shape = (batch_size, self.attn.n_head, max_seqlen, self.attn.head_dim)
        dtype = dtype or upcast(weight).dtype  # keys and values as attention computes them on the CPU
        return KVCache(weight.new_zeros(shape, dtype=dtype), weight.new_zeros(shape, dtype=dtype))


def _attention_macs(shapes: list) -> int:
    """SDPA over q (.., L, K), k (.., S, K), v (.., S, Kv): L·S·K (QK^T) + L·S·Kv (AV) MACs per head, the full L×S
    score matrix whatever the mask (no causal halving)."""
    q, k, v = shapes[:3]
    *lead, length, head_dim = q
    return math.prod(lead) * length * k[-2] * (head_dim + v[-1])


class TransformerFamily(Family[ModelConfig]):
    """Transformer blocks (attention + SwiGLU MLP), one per layer."""

    name = "transformer"
    parts = TRANSFORMER_PARTS
    blocks_per_layer = 1
    ablation_groups = (("wq", "wk", "wv", "wo"), ("mlp", "norm"))
    image_attention = True  # attends bidirectionally within a continuous image (Transfusion)
    flop_ops = {"aten::scaled_dot_product_attention": FlopOp("scaled_dot_product_attention", _attention_macs)}
    # The paper scales reproduce their names with the Transfusion setting's 32k vocabulary and untied embeddings
    # (docs/papers.md). Head counts are not published: head_dim 64 at 163m and 128 above are our choice.
    scales = {
        "nano": dict(d_model=64, n_layer=2, n_head=2, mlp_multiple_of=64, vocab_size=4096),
        "tiny": dict(d_model=128, n_layer=2, n_head=4, mlp_multiple_of=64, vocab_size=4096),
        "mini": dict(d_model=256, n_layer=2, n_head=8, mlp_multiple_of=64, vocab_size=4096),
        "small": dict(d_model=256, n_layer=4, n_head=4, mlp_multiple_of=64, vocab_size=8192),
        "163m": dict(d_model=768, n_layer=16, n_head=12, vocab_size=32000),
        "760m": dict(d_model=1536, n_layer=24, n_head=12, vocab_size=32000),
        "1.4b": dict(d_model=2048, n_layer=24, n_head=16, vocab_size=32000),
    }

    def check(self, cfg: ModelConfig) -> None:
        if cfg.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(
                f"unknown norm_placement {cfg.norm_placement!r}; valid choices are {list(NORM_PLACEMENTS)}"
            )
        check_heads(cfg.d_model, cfg.n_head)

    def block(self, cfg: ModelConfig) -> nn.Module:
        hidden = mlp_hidden(cfg.d_model, cfg.mlp_multiple_of)
        n_modalities = cfg.n_modalities if cfg.is_sparse else 1
        # The block's other arguments are the ModelConfig fields of the same names.
        kwargs = {name: getattr(cfg, name) for name in "decouple norm_placement qk_norm norm_eps rope_theta".split()}
        return TransformerBlock(cfg.d_model, cfg.n_head, hidden, n_modalities, **kwargs)

    @torch.no_grad()
    def init_block(self, block: nn.Module, cfg: ModelConfig) -> None:
        """N(0, init_std) for every projection, init_std/sqrt(2·n_block) for the residual outputs wo and w2 (GPT-2)."""
        for name, module in block.named_modules():
            if isinstance(module, ModalityLinear):
                residual_out = name.endswith(("wo", "w2"))
                std = cfg.init_std / math.sqrt(2 * cfg.n_block) if residual_out else cfg.init_std
                nn.init.normal_(module.weight, std=std)

    def block_params(self, cfg: ModelConfig) -> tuple[dict[str, int], int]:
        d, hidden = cfg.d_model, mlp_hidden(cfg.d_model, cfg.mlp_multiple_of)
        norms = 2 * d + (2 * (d // cfg.n_head) if cfg.qk_norm else 0)  # sublayer norms, QK-norms
        parts = {"wq": d * d, "wk": d * d, "wv": d * d, "wo": d * d, "mlp": 3 * d * hidden, "norm": norms}
        return parts, 0

    def block_flops(self, cfg: ModelConfig, seq_len: int) -> dict[str, int]:
        d, hidden = cfg.d_model, mlp_hidden(cfg.d_model, cfg.mlp_multiple_of)
        return {
            "matmul": 2 * (4 * d * d + 3 * d * hidden),  # Wq, Wk, Wv, Wo; SwiGLU's w1, w3 (D -> F), w2
            "attention": 2 * 2 * seq_len * d,  # QK^T and AV over the full L x L, L·d MACs each per token
        }

    def backend(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> str:
        return "sdpa"


TRANSFORMER = TransformerFamily()
register_arm(Arm("transformer", TRANSFORMER, "Transformer", "tab:green", default=True))
register_arm(Arm("mot", TRANSFORMER, "MoT", "tab:red", dense="transformer", routing="modality", default=True))
register_arm(Arm("mot_hash", TRANSFORMER, "MoT-pos-hash", "tab:brown", dense="transformer", routing="position_hash"))
register_arm(Arm("mot_idhash", TRANSFORMER, "MoT-id-hash", "tab:gray", dense="transformer", routing="token_hash"))
# The Llama block (pre-norm, no QK-norm) the suite used before it adopted the MoT / Chameleon block: kept so that the
# block's effect is measured.
PRENORM = {"norm_placement": "pre", "qk_norm": False}
register_arm(Arm("transformer_prenorm", TRANSFORMER, "Transformer (pre-norm)", "tab:olive", config=PRENORM))
register_arm(
    Arm("mot_prenorm", TRANSFORMER, "MoT (pre-norm)", "tab:pink", dense="transformer_prenorm", routing="modality",
        config=PRENORM)
)  # fmt: skip
register_arm(Arm("transformer_twin", TRANSFORMER, "Transformer twin", "darkseagreen", dense="transformer",
                 config={"init_seed_offset": TWIN_SEED_OFFSET}))  # fmt: skip
