"""The transformer block, dense (`transformer`) and Mixture-of-Transformers (`mot`) in one class.

Llama-style decoder block: RMSNorm, causal self-attention through `scaled_dot_product_attention` with rotary
position embeddings (the rotate-half convention of Llama / Hugging Face), and a SwiGLU MLP. Mixture-of-Transformers
(Liang et al., arXiv 2411.04996) unties Wq, Wk, Wv, Wo, the MLP and the norms per modality while attention itself
runs over the whole sequence; which parts are untied is the `decouple` field (any subset of TRANSFORMER_PARTS).

Shapes: B batch, L sequence, D d_model, H heads, K head_dim (= D / H), F mlp hidden, M n_modalities.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import ModalityLinear, ModalityRMSNorm, ModalityRouting, validate_parts

TRANSFORMER_PARTS = ("wq", "wk", "wv", "wo", "mlp", "norm")
NORM_PLACEMENTS = ("pre", "post")  # pre: x + f(norm(x)); post: x + norm(f(x)), MoT's / Chameleon's "SwinNorm"


def mlp_hidden(d_model: int, multiple_of: int) -> int:
    """SwiGLU hidden width: 2/3 of 4·D rounded up to a multiple (lingua / MoT's convention)."""
    return multiple_of * -(-(8 * d_model // 3) // multiple_of)


def rotary_cos_sin(seqlen: int, head_dim: int, theta: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos and sin tables (L, K) for rotary embeddings, in float32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seqlen, device=device, dtype=torch.float32), inv_freq)  # (L, K/2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, K): the rotate-half layout
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, L, K) queries or keys by position; computed in float32, returned in x's dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; Wq/Wk/Wv/Wo per modality when decoupled, attention always global."""

    def __init__(
        self, d_model: int, n_head: int, n_modalities: int = 1, decouple: Iterable[str] = (), rope_theta: float = 1e4
    ) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.d_model, self.n_head, self.head_dim, self.rope_theta = d_model, n_head, d_model // n_head, rope_theta
        decouple = set(decouple)
        for name in ("wq", "wk", "wv", "wo"):
            m = n_modalities if name in decouple else 1
            setattr(self, name, ModalityLinear(d_model, d_model, m, bias=False))

    def forward(self, x: Tensor, routing: ModalityRouting | None) -> Tensor:
        """x (B, L, D) -> (B, L, D)."""
        batch, seqlen, _ = x.shape
        projections = (self.wq, self.wk, self.wv)
        if routing is not None and any(p.n_modalities > 1 for p in projections):
            # q, k and v read the same tokens: one sort and one unsort for all three.
            rows = routing.sort(x)
            qkv = routing.unsort(torch.cat([p.forward_sorted(rows, routing) for p in projections], dim=-1))
        else:
            qkv = torch.cat([p(x) for p in projections], dim=-1)
        q, k, v = (t.view(batch, seqlen, self.n_head, self.head_dim).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        cos, sin = rotary_cos_sin(seqlen, self.head_dim, self.rope_theta, x.device)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, K)
        return self.wo(y.transpose(1, 2).reshape(batch, seqlen, self.d_model), routing)


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
        norm_placement: "pre" (x + f(norm(x)), the default) or "post" (x + norm(f(x)), MoT's choice).
        norm_eps, rope_theta: RMSNorm epsilon and rotary base.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        mlp_hidden: int,
        n_modalities: int = 1,
        decouple: Iterable[str] = TRANSFORMER_PARTS,
        norm_placement: str = "pre",
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
        self.attn = CausalSelfAttention(d_model, n_head, n_modalities, decouple, rope_theta)
        self.mlp_norm = ModalityRMSNorm(d_model, n_norm, eps=norm_eps)
        self.mlp = SwiGLU(d_model, mlp_hidden, n_modalities if "mlp" in decouple else 1)

    def forward(self, x: Tensor, routing: ModalityRouting | None) -> Tensor:
        """x (B, L, D) -> (B, L, D)."""
        for norm, sublayer in ((self.attn_norm, self.attn), (self.mlp_norm, self.mlp)):
            if self.norm_placement == "pre":
                x = x + sublayer(norm(x, routing), routing)
            else:
                x = x + norm(sublayer(x, routing), routing)
        return x
