"""`ModelConfig`: the architecture of one model of the suite, and its analytic parameter count.

`arch` names a registered arm (models/arms.py): its family gives the block, the parts a sparse arm decouples per
modality, the named sizes, the parameter count and the FLOPs; the arm gives the dense partner and the routing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

from models.arms import Arm, get_arm, sparse_arms
from models.family import Family, check_scale
from models.layers import validate_parts

# Fields whose default depends on the arm (Arm.config); these are the defaults of every other arm.
BLOCK_DEFAULTS = {"norm_placement": "post", "qk_norm": True, "init_seed_offset": 0}


@dataclass
class ModelConfig:
    """Architecture of one model. Build a named one with `ModelConfig.from_scale("tiny", arch="mom", ...)`.

    Attributes:
        arch: a registered arm (models.arms.ARMS).
        vocab_size: size of the joint vocabulary (text, image codes, speech units, specials).
        n_modalities: M, the number of modalities in the data (text = 0, image = 1, speech = 2).
        d_model: model width.
        n_layer: transformer-layer equivalents (Mamba models have 2 * n_layer mixer blocks).
        decouple: parts with one copy per modality (M experts). None means the arm's default (every part of the
            family for mom and mot); it must be empty for a dense arch. Valid names: the family's `parts`.
        routing: what picks a token's expert, the arm's routing: "none" (dense), "modality" (mom, mot),
            "position_hash" (mom_hash, mot_hash) or "token_hash" (mom_idhash, mot_idhash). Recorded in to_dict();
            None derives it, any other value must equal it.
        n_head, mlp_multiple_of, rope_theta: transformer family.
        norm_placement, qk_norm: the transformer block's norms: None takes the arm's (`Arm.config`), else the MoT /
            Chameleon block's ("post": x + norm(f(x)), and QK-norm on).
        d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale, dt_init_floor, conv_bias, bias,
            scan_backend: Mamba family, mamba-ssm's names and defaults.
        headdim, ngroups, chunk_size: Mamba-2 family (mamba-ssm's `Mamba2` names and defaults): the SSD's head size
            P, the groups of heads that share B and C, and the chunk length of the chunked scan.
        patch_dim: width of continuous image patches (Transfusion); 0 disables the patch input/output layers.
        norm_eps: RMSNorm epsilon.
        init_std: standard deviation of the embedding / transformer linear initialisation.
        init_from_dense: a sparse arm starts with every expert equal to its dense arm's initial weights (the same
            random draws as the dense run of the same seed); no effect on a dense arm.
        init_seed_offset: the initial weights are drawn with torch seeded at the run's seed plus this; nothing else
            changes (the twin arms set it). None takes the arm's (`Arm.config`), else 0.
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
    norm_placement: str | None = None
    qk_norm: bool | None = None
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
    # mamba2 family (also reads d_state, d_conv, expand, dt_min, dt_max, dt_init_floor, conv_bias, bias, scan_backend)
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    # continuous inputs (Transfusion)
    patch_dim: int = 0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    init_from_dense: bool = False
    init_seed_offset: int | None = None

    def __post_init__(self) -> None:
        arm = get_arm(self.arch)
        for name, value in {**BLOCK_DEFAULTS, **arm.config}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("vocab_size", "n_modalities", "d_model", "n_layer", "n_head", "d_state", "d_conv", "expand",
                     "headdim", "ngroups", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patch_dim < 0:
            raise ValueError(f"patch_dim must be >= 0, got {self.patch_dim}")
        self.family.check(self)  # the family's own fields
        if self.decouple is None:
            self.decouple = arm.parts
        self.decouple = validate_parts(self.decouple, self.family.parts, self.family.name)
        if self.decouple and not arm.is_sparse:
            raise ValueError(
                f"arch {self.arch!r} is dense and cannot decouple {list(self.decouple)}; "
                f"use arch {' or '.join(map(repr, sparse_arms(self.family)))} for per-modality parts"
            )
        if self.routing is None:
            self.routing = arm.routing
        if self.routing != arm.routing:
            raise ValueError(
                f"arch {self.arch!r} routes by {arm.routing!r}, not {self.routing!r}: routing follows the arch, "
                "leave it None (hash routing: the arms 'mom_hash', 'mot_hash', 'mom_idhash', 'mot_idhash')"
            )

    @classmethod
    def from_scale(cls, scale: str, arch: str = "mamba", **overrides) -> ModelConfig:
        """The named scale's config for `arch`, with any field overridden (vocab_size, n_modalities, ...)."""
        return cls(arch=arch, **{**get_arm(arch).family.scales[check_scale(scale)], **overrides})

    def dense(self) -> ModelConfig:
        """The dense baseline's config (itself for a dense arch)."""
        return replace(self, arch=self.arm.dense or self.arch, decouple=(), routing=None, init_seed_offset=None)

    @property
    def arm(self) -> Arm:
        return get_arm(self.arch)

    @property
    def family(self) -> Family:
        return self.arm.family

    @property
    def is_sparse(self) -> bool:
        return self.arm.is_sparse

    @property
    def n_block(self) -> int:
        """Residual blocks in the stack (the family's blocks per transformer-layer equivalent x n_layer)."""
        return self.family.blocks_per_layer * self.n_layer

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank_value(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

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
    shared = 2 * V * d + d  # token embedding, untied LM head, final norm
    if cfg.patch_dim:
        P = cfg.patch_dim
        shared += (P * d + d) + (d * P + P) + 2 * (d * d + d)  # patch in, patch out, timestep MLP
    per_part, per_block = cfg.family.block_params(cfg)
    shared += cfg.n_block * per_block
    total = shared + cfg.n_block * sum(n * (M if part in cfg.decouple else 1) for part, n in per_part.items())
    active = shared + cfg.n_block * sum(per_part.values())
    return ParamCount(total, active)


def non_embedding_params(cfg: ModelConfig) -> int:
    """Active parameters less the token embedding and the LM head: the model size N of scaling laws (Kaplan et al.
    2020), which a scale ladder is measured in; independent of the vocabulary."""
    return param_count(cfg).active - 2 * cfg.vocab_size * cfg.d_model
