"""`ModelConfig`: the architecture of one model of the suite, the named scales, and the analytic parameter count.

Four arms: `mamba` (dense Mamba), `mom` (Mixture-of-Mamba), `transformer` (dense) and `mot`
(Mixture-of-Transformers). Dense and sparse arms of a family share one config; the sparse arm decouples the parts
listed in `decouple` per modality.

Two control arms, `mom_hash` and `mot_hash`, have exactly the experts, parameters and FLOPs of `mom` and `mot`, but
send each token to the expert picked by a fixed hash of its position in the sequence instead of its modality
(`routing`). They ask whether any extra parameters would do, or whether the modality split is what helps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

from models.layers import validate_parts
from models.mamba import MAMBA_PARTS
from models.scan import BACKENDS
from models.transformer import NORM_PLACEMENTS, TRANSFORMER_PARTS, mlp_hidden

ARCHS = ("mamba", "mom", "mom_hash", "transformer", "mot", "mot_hash")
FAMILY = {
    "mamba": "mamba",
    "mom": "mamba",
    "mom_hash": "mamba",
    "transformer": "transformer",
    "mot": "transformer",
    "mot_hash": "transformer",
}
DENSE_OF = {"mom": "mamba", "mom_hash": "mamba", "mot": "transformer", "mot_hash": "transformer"}
# What picks a token's expert in every sparse part: nothing (dense arms have one copy of everything), the token's
# modality, or a fixed hash of its position in the sequence (models/lm.py `position_hash_ids`).
ROUTING = {
    "mamba": "none",
    "mom": "modality",
    "mom_hash": "position_hash",
    "transformer": "none",
    "mot": "modality",
    "mot_hash": "position_hash",
}
PARTS = {"mamba": MAMBA_PARTS, "transformer": TRANSFORMER_PARTS}

# Named scales. n_layer counts transformer-layer equivalents: a Mamba model has 2 * n_layer mixer blocks (two Mamba
# blocks replace attention + MLP, mamba-ssm's convention), so the dense arms of one scale have about the same
# parameters. The paper scales reproduce their names with the Transfusion setting's 32k vocabulary and untied
# embeddings (PAPERS.md §5): transformers at (768, 16), (1536, 24), (2048, 24); Mamba at 30, 44 and 48 blocks of the
# same widths, because 2 blocks per transformer layer would overshoot 163M and 760M by 4% and 7%. Head counts for the
# paper scales are not published; head_dim 64 (163m) and 128 (760m, 1.4b) are our choice.
SCALES: dict[str, dict[str, dict[str, int]]] = {
    "tiny": {
        "transformer": dict(d_model=128, n_layer=2, n_head=4, mlp_multiple_of=64, vocab_size=4096),
        "mamba": dict(d_model=128, n_layer=2, vocab_size=4096),
    },
    "small": {
        "transformer": dict(d_model=256, n_layer=4, n_head=4, mlp_multiple_of=64, vocab_size=8192),
        "mamba": dict(d_model=256, n_layer=4, vocab_size=8192),
    },
    "163m": {
        "transformer": dict(d_model=768, n_layer=16, n_head=12, vocab_size=32000),
        "mamba": dict(d_model=768, n_layer=15, vocab_size=32000),
    },
    "760m": {
        "transformer": dict(d_model=1536, n_layer=24, n_head=12, vocab_size=32000),
        "mamba": dict(d_model=1536, n_layer=22, vocab_size=32000),
    },
    "1.4b": {
        "transformer": dict(d_model=2048, n_layer=24, n_head=16, vocab_size=32000),
        "mamba": dict(d_model=2048, n_layer=24, vocab_size=32000),
    },
}


@dataclass
class ModelConfig:
    """Architecture of one model. Build a named one with `ModelConfig.from_scale("tiny", arch="mom", ...)`.

    Attributes:
        arch: one of ARCHS.
        vocab_size: size of the joint vocabulary (text, image codes, speech units, specials).
        n_modalities: M, the number of modalities in the data (text = 0, image = 1, speech = 2).
        d_model: model width.
        n_layer: transformer-layer equivalents (Mamba models have 2 * n_layer mixer blocks).
        decouple: parts with one copy per modality (M experts). None means every part of the family for a sparse
            arch; it must be empty for a dense arch. Mamba parts: MAMBA_PARTS; transformer parts: TRANSFORMER_PARTS.
        routing: what picks a token's expert, ROUTING[arch]: "none" (dense), "modality" (mom, mot) or
            "position_hash" (mom_hash, mot_hash). Derived from the arch and recorded in to_dict(); None derives it,
            any other value must equal it.
        n_head, mlp_multiple_of, norm_placement, rope_theta: transformer family.
        d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale, dt_init_floor, conv_bias, bias,
            scan_backend: Mamba family, mamba-ssm's names and defaults.
        patch_dim: width of continuous image patches (Transfusion); 0 disables the patch input/output layers.
        norm_eps: RMSNorm epsilon.
        init_std: standard deviation of the embedding / transformer linear initialisation.
    """

    arch: str = "mamba"
    vocab_size: int = 4096
    n_modalities: int = 2
    d_model: int = 128
    n_layer: int = 2
    decouple: tuple[str, ...] | None = None
    routing: str | None = None
    # transformer family
    n_head: int = 4
    mlp_multiple_of: int = 256
    norm_placement: str = "pre"
    rope_theta: float = 10000.0
    # mamba family
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    scan_backend: str = "auto"
    # continuous inputs (Transfusion)
    patch_dim: int = 0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; valid choices are {list(ARCHS)}")
        for name in ("vocab_size", "n_modalities", "d_model", "n_layer", "n_head", "d_state", "d_conv", "expand"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patch_dim < 0:
            raise ValueError(f"patch_dim must be >= 0, got {self.patch_dim}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(
                f"unknown norm_placement {self.norm_placement!r}; valid choices are {list(NORM_PLACEMENTS)}"
            )
        if self.scan_backend not in BACKENDS:
            raise ValueError(f"unknown scan_backend {self.scan_backend!r}; valid choices are {list(BACKENDS)}")
        if self.family == "transformer" and self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.dt_rank != "auto" and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got {self.dt_rank!r}")
        parts = PARTS[self.family]
        if self.decouple is None:
            self.decouple = parts if self.is_sparse else ()
        self.decouple = validate_parts(self.decouple, parts, self.family)
        if self.decouple and not self.is_sparse:
            raise ValueError(
                f"arch {self.arch!r} is dense and cannot decouple {list(self.decouple)}; "
                f"use arch {'mom' if self.family == 'mamba' else 'mot'!r} for per-modality parts"
            )
        if self.routing is None:
            self.routing = ROUTING[self.arch]
        if self.routing != ROUTING[self.arch]:
            raise ValueError(
                f"arch {self.arch!r} routes by {ROUTING[self.arch]!r}, not {self.routing!r}: routing follows the arch, "
                "leave it None (position-hash routing: arch 'mom_hash' or 'mot_hash')"
            )

    @classmethod
    def from_scale(cls, scale: str, arch: str = "mamba", **overrides) -> ModelConfig:
        """The named scale's config for `arch`, with any field overridden (vocab_size, n_modalities, ...)."""
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; valid choices are {list(SCALES)}")
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; valid choices are {list(ARCHS)}")
        return cls(arch=arch, **{**SCALES[scale][FAMILY[arch]], **overrides})

    def dense(self) -> ModelConfig:
        """The dense baseline's config (itself for a dense arch)."""
        return replace(self, arch=DENSE_OF.get(self.arch, self.arch), decouple=(), routing=None)

    @property
    def family(self) -> str:
        return FAMILY[self.arch]

    @property
    def is_sparse(self) -> bool:
        return self.arch in DENSE_OF

    @property
    def n_block(self) -> int:
        """Residual blocks in the stack: 2 Mamba mixers per layer, 1 transformer block (attention + MLP) per layer."""
        return 2 * self.n_layer if self.family == "mamba" else self.n_layer

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank_value(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    @property
    def mlp_hidden(self) -> int:
        return mlp_hidden(self.d_model, self.mlp_multiple_of)

    def to_dict(self) -> dict:
        """Plain, JSON-friendly dict; `ModelConfig(**cfg.to_dict()) == cfg`."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["decouple"] = list(self.decouple)
        return out


class ParamCount(NamedTuple):
    total: int
    active: int  # parameters one token passes through (one expert per sparse part)


def param_count(cfg: ModelConfig) -> ParamCount:
    """Parameters of `MultiModalLM(cfg)` computed from the config alone (no allocation)."""
    d, V, M = cfg.d_model, cfg.vocab_size, cfg.n_modalities

    def copies(part: str) -> int:
        return M if part in cfg.decouple else 1

    per_part: dict[str, int] = {}  # parameters of one copy of each decouplable part, summed over the stack
    shared = 2 * V * d + d  # token embedding, untied LM head, final norm
    if cfg.patch_dim:
        P = cfg.patch_dim
        shared += (P * d + d) + (d * P + P) + 2 * (d * d + d)  # patch in, patch out, timestep MLP
    if cfg.family == "mamba":
        E, N, R, K = cfg.d_inner, cfg.d_state, cfg.dt_rank_value, cfg.d_conv
        per_block = {
            "in_proj": d * 2 * E + (2 * E if cfg.bias else 0),
            "x_proj": E * (R + 2 * N),
            "dt_proj": R * E + E,
            "out_proj": E * d + (d if cfg.bias else 0),
        }
        shared += cfg.n_block * (d + E * K + (E if cfg.conv_bias else 0) + E * N + E)  # norm, conv1d, A_log, D
    else:
        per_block = {"wq": d * d, "wk": d * d, "wv": d * d, "wo": d * d, "mlp": 3 * d * cfg.mlp_hidden, "norm": 2 * d}
    for part, n in per_block.items():
        per_part[part] = cfg.n_block * n
    total = shared + sum(n * copies(part) for part, n in per_part.items())
    active = shared + sum(per_part.values())
    return ParamCount(total, active)
