"""`MultiModalLM`: one model class for every arm, built from a `ModelConfig`.

token embedding over the joint vocabulary (+ patch projection and timestep embedding for continuous image
patches) -> stack of residual blocks (Mamba mixers or transformer blocks, dense or per modality) -> final RMSNorm
-> LM head over the vocabulary (+ patch head predicting each noised patch's noise).

A sparse arm picks each token's expert once per forward (`MultiModalLM.expert_ids`) and every sparse part of every
block reuses that choice: `mom` / `mot` by the token's modality, the `mom_hash` / `mot_hash` controls by a fixed hash
of its position. The control arms are the same modules on a different routing key, nothing else.

Shapes: B batch, L sequence, D d_model, V vocab_size, P patch_dim, n number of patch positions in the batch.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import ModelConfig, ParamCount
from models.experts import expert_parameters, upcycle_state_dict
from models.layers import (
    ModalityLinear,
    ModalityRMSNorm,
    ModalityRouting,
    image_attention_mask,
    upcast,
    validate_modality_ids,
)

# Knuth's multiplicative hash (TAOCP vol. 3, §6.4): the prime nearest 2^32 / φ (golden ratio).
KNUTH_MULTIPLIER = 2654435761


def position_hash_ids(batch: int, seq_len: int, n_experts: int, device: torch.device | str | None = None) -> Tensor:
    """(B, L) expert of each position for the `*_hash` arms: floor(M · ((p · KNUTH_MULTIPLIER) mod 2^32) / 2^32).

    Knuth's multiplicative hash of the position p in the sequence, read from its top bits (the low bits of an odd
    multiple only repeat p's own low bits: mod 2 they would alternate). It depends on nothing but p and M, so it is the
    same for every row, batch and call, and independent of tokens and modalities. The fractions p/φ mod 1 spread
    evenly (the golden-ratio sequence), so every window of positions splits almost equally between the M experts.
    """
    pos = torch.arange(seq_len, device=device, dtype=torch.int64)
    h = (pos * KNUTH_MULTIPLIER) & 0xFFFFFFFF  # 32-bit hash; the int64 product cannot overflow for L < 2^31
    return ((h * n_experts) >> 32).expand(batch, seq_len)  # (B, L) in [0, M)


def token_hash_table(vocab_size: int, n_experts: int) -> Tensor:
    """(V,) the expert of each token id before balancing: Knuth's multiplicative hash of the id (as for positions)."""
    h = (torch.arange(vocab_size, dtype=torch.int64) * KNUTH_MULTIPLIER) & 0xFFFFFFFF
    return (h * n_experts) >> 32


def balanced_token_table(counts: Tensor, n_experts: int) -> Tensor:
    """(V,) a fixed expert per token id with balanced loads (Hash Layers' balanced assignment, Roller et al. 2021):
    ids in decreasing order of their training frequency `counts` (V,) each go to the expert with the least load so far
    (ties: the lowest expert), so the experts' shares of the training tokens differ by at most the largest count."""
    table = torch.zeros(len(counts), dtype=torch.int64)
    loads = [0] * n_experts
    for token in torch.argsort(counts.to(torch.int64), descending=True, stable=True).tolist():
        expert = min(range(n_experts), key=loads.__getitem__)
        table[token] = expert
        loads[expert] += int(counts[token])
    return table


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal embedding of diffusion timesteps: (n,) -> (n, dim), in `dtype` (float32, or float64)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)
    args = t.to(dtype)[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return F.pad(emb, (0, dim % 2))


class LMOutput(NamedTuple):
    logits: Tensor  # (B, L, V): next-token logits at every position
    patch_pred: Tensor | None  # (n, P): predicted noise at each patch position, in patch_mask's row-major order


@dataclass
class InferenceCache:
    """Generation state of a `MultiModalLM`: one cache per block (Mamba: conv and SSM states; transformer: keys and
    values) and the positions consumed so far (mamba-ssm's `InferenceParams.seqlen_offset`)."""

    layers: list
    seqlen_offset: int = 0


class MultiModalLM(nn.Module):
    """The suite's language model over interleaved modalities, for every arm, built from `cfg`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embedding = nn.Embedding(cfg.vocab_size, d)
        if cfg.patch_dim:
            self.patch_in = nn.Linear(cfg.patch_dim, d)
            self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
            self.patch_head = nn.Linear(d, cfg.patch_dim)
        self.layers = nn.ModuleList(cfg.family.block(cfg) for _ in range(cfg.n_block))
        if cfg.routing == "token_hash":  # part of the state dict: a checkpoint keeps its balanced table
            self.register_buffer("token_experts", token_hash_table(cfg.vocab_size, cfg.n_modalities))
        self.norm_f = ModalityRMSNorm(d, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Model-level initialisation on top of each layer's own.

        Embedding N(0, init_std); the LM head likewise. Biases of the blocks' projections are zeroed except the dt
        bias, whose inverse-softplus init must survive; then the family initialises each block (`Family.init_block`).
        """
        std = self.cfg.init_std
        nn.init.normal_(self.embedding.weight, std=std)
        nn.init.normal_(self.lm_head.weight, std=std)
        for module in self.layers.modules():
            if isinstance(module, ModalityLinear) and module.bias is not None:
                if not getattr(module.bias, "_no_reinit", False):
                    module.bias.zero_()
        for layer in self.layers:
            self.cfg.family.init_block(layer, self.cfg)

    def forward(
        self,
        tokens: Tensor,
        modality_ids: Tensor | None = None,
        patches: Tensor | None = None,
        patch_mask: Tensor | None = None,
        timesteps: Tensor | None = None,
        cache: InferenceCache | None = None,
    ) -> LMOutput:
        """Per-position outputs for a batch of interleaved sequences.

        With a `cache` (`allocate_inference_cache`) the tokens continue the cached sequences and the cache advances:
        a prompt, then one token at a time, gives the logits the whole sequence would get in one call (Mamba and
        MoM step their recurrence, mamba-ssm's `step`; transformers and MoT attend over cached keys and values).
        Patches work the same way; a transformer's patches attend to each other within an image only when the
        whole image comes in one call.

        Args:
            tokens: (B, L) int64 ids in the joint vocabulary (ignored at patch positions).
            modality_ids: (B, L) int64 in [0, n_modalities); required by the modality-routed arms (mom, mot),
                validated whenever given. The hash-routed arms do not read them.
            patches: (B, L, P) continuous patch inputs (Transfusion); read only where patch_mask is True.
            patch_mask: (B, L) bool, True at positions that carry a (noised) image patch instead of a token.
            timesteps: (B, L) int64 diffusion timestep of each patch position's image.

        Returns:
            LMOutput(logits (B, L, V), patch_pred (n, P) or None).
        """
        cfg = self.cfg
        if tokens.dim() != 2 or tokens.dtype.is_floating_point:
            raise ValueError(f"tokens must be a (B, L) integer tensor, got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.numel():
            lo, hi = (int(v) for v in torch.aminmax(tokens))
            if lo < 0 or hi >= cfg.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"token id {bad} is out of range: valid ids are 0..{cfg.vocab_size - 1}")
        if modality_ids is not None:
            if modality_ids.shape != tokens.shape:
                raise ValueError(
                    f"modality_ids shape {tuple(modality_ids.shape)} != tokens shape {tuple(tokens.shape)}"
                )
            validate_modality_ids(modality_ids, cfg.n_modalities)  # every arm rejects bad ids
        elif cfg.routing == "modality" and cfg.n_modalities > 1:
            raise ValueError(f"arch {cfg.arch!r} routes by modality: modality_ids (B, L) are required")
        start = 0 if cache is None else cache.seqlen_offset
        expert_ids = self.expert_ids(tokens, modality_ids, start)
        routing = ModalityRouting(expert_ids, cfg.n_modalities) if expert_ids is not None else None  # the one sort

        h = self.embedding(tokens)  # (B, L, D)
        if patches is not None:
            patch_h = self._embed_patches(tokens, patches, patch_mask, timesteps)  # (n, D)
            h = h.masked_scatter(patch_mask[..., None], patch_h.to(h.dtype))
        # Transfusion: attention is bidirectional within each image, in the families that attend (transformers).
        image_mask = patches is not None and cfg.family.image_attention
        attn_mask = image_attention_mask(patch_mask) if image_mask else None
        if cache is not None:
            if attn_mask is not None:  # the new positions also see every cached one (an image lies in one call)
                attn_mask = F.pad(attn_mask, (start, 0), value=True)
            extra = {} if attn_mask is None else {"attn_mask": attn_mask}
            for layer, layer_cache in zip(self.layers, cache.layers, strict=True):
                h = layer(h, routing, cache=layer_cache, **extra)
            cache.seqlen_offset += tokens.shape[1]
        else:
            for layer in self.layers:
                h = layer(h, routing) if attn_mask is None else layer(h, routing, attn_mask)
        h = self.norm_f(h)
        logits = self.lm_head(h)
        patch_pred = self.patch_head(h[patch_mask]) if patches is not None else None
        return LMOutput(logits, patch_pred)

    def allocate_inference_cache(
        self, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None
    ) -> InferenceCache:
        """Empty generation state for `batch_size` sequences of up to `max_seqlen` positions (mamba-ssm's name)."""
        return InferenceCache([layer.allocate_inference_cache(batch_size, max_seqlen, dtype) for layer in self.layers])

    def expert_ids(self, tokens: Tensor, modality_ids: Tensor | None, start: int = 0) -> Tensor | None:
        """(B, L) the expert every sparse part uses for each token, or None (dense arms: nothing to route).

        cfg.routing "modality" (mom, mot): the token's modality. "position_hash" (mom_hash, mot_hash): a fixed hash
        of its position, `position_hash_ids`, whatever the tokens and modalities. "token_hash" (mom_idhash,
        mot_idhash): a fixed expert per token id, `token_experts` (balanced on the training data by
        `balance_token_experts`). Only expert choice reads this; everything else (validation, patch layers, the losses
        outside the model) keeps the real modalities.
        """
        if self.cfg.routing == "position_hash":  # positions start.. (a continued sequence)
            batch, seqlen = tokens.shape
            return position_hash_ids(batch, start + seqlen, self.cfg.n_modalities, device=tokens.device)[:, start:]
        if self.cfg.routing == "token_hash":
            return self.token_experts.index_select(0, tokens.reshape(-1)).view(tokens.shape)
        if self.cfg.routing == "modality":
            return modality_ids
        return None

    def _embed_patches(self, tokens: Tensor, patches: Tensor, patch_mask: Tensor | None, timesteps: Tensor | None):
        """(n, D) embeddings of the patch positions: patch projection + timestep embedding of their image."""
        if not self.cfg.patch_dim:
            raise ValueError("this model has no patch layers: build it with patch_dim > 0 to pass patches")
        want = (*tokens.shape, self.cfg.patch_dim)
        if patches.shape != want:
            raise ValueError(f"patches must have shape (B, L, patch_dim) = {want}, got {tuple(patches.shape)}")
        for name, t, dtype_ok in (
            ("patch_mask", patch_mask, lambda x: x.dtype == torch.bool),
            ("timesteps", timesteps, lambda x: not x.dtype.is_floating_point),
        ):
            if t is None or t.shape != tokens.shape or not dtype_ok(t):
                got = None if t is None else f"{tuple(t.shape)} {t.dtype}"
                raise ValueError(f"{name} must be a (B, L) tensor like tokens ({tuple(tokens.shape)}), got {got}")
        dtype = upcast(self.patch_in.weight).dtype  # float32, or float64 in a float64 model
        temb = self.time_mlp(timestep_embedding(timesteps[patch_mask], self.cfg.d_model, dtype=dtype))
        return self.patch_in(patches[patch_mask]) + temb

    @property
    def backend(self) -> str:
        """The kernel a forward on this model's device runs: the selective-scan backend, or "sdpa" (transformers)."""
        weight = self.embedding.weight
        return self.cfg.family.backend(self.cfg, weight.device, weight.dtype)

    @torch.no_grad()
    def balance_token_experts(self, counts: Tensor) -> None:
        """Reassign the token-hash arms' experts so that each gets an equal share of `counts` (V,), the training
        frequency of every token id (`balanced_token_table`)."""
        if self.cfg.routing != "token_hash":
            raise ValueError(f"arch {self.cfg.arch!r} routes by {self.cfg.routing!r}, not by token id")
        if counts.shape != (self.cfg.vocab_size,):
            raise ValueError(f"counts must be ({self.cfg.vocab_size},), one per token id; got {tuple(counts.shape)}")
        self.token_experts.copy_(balanced_token_table(counts, self.cfg.n_modalities))

    def param_count(self) -> ParamCount:
        """(total, active per token) from the modules themselves: a sparse layer's token uses one of its M copies."""
        total = sum(p.numel() for p in self.parameters())
        state = self.state_dict(keep_vars=True)
        inactive = sum(state[key].numel() * (n - 1) // n for key, n in expert_parameters(self).items())
        return ParamCount(total, total - inactive)


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> MultiModalLM:
    """MultiModalLM(cfg), built directly on `device` ("meta" counts parameters without allocating).

    With `cfg.init_from_dense` a sparse model starts as its dense arm would (upcycling at step 0): the dense model is
    built first, from the same random state a dense run builds from, and every expert gets its weights. With
    `cfg.init_seed_offset` the weights are drawn with torch seeded at its initial seed (a run's seed) plus the
    offset, on a fork of torch's random state, which the build leaves as it was.
    """
    if cfg.init_seed_offset:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed() + cfg.init_seed_offset)
            return build_model(replace(cfg, init_seed_offset=0), device)
    with torch.device(device) if device is not None else nullcontext():
        if not (cfg.init_from_dense and cfg.is_sparse):
            return MultiModalLM(cfg)
        dense = MultiModalLM(cfg.dense())
        model = MultiModalLM(cfg)
        model.load_state_dict(upcycle_state_dict(model, dense.state_dict()))
        return model
