"""Per-modality training losses, shared by every arm (plain torch; the LightningModule only calls this).

Discrete positions: next-token cross-entropy. A position's loss belongs to the modality of its *target* (position t
predicts token t + 1). Transfusion image positions: DDPM ε-prediction MSE, the mean over patch elements.

Totals: the cross-entropy averaged over every discrete target position (all modalities together); with continuous
images (Transfusion) plus λ · L_image, λ = 5 by default. In the Transfusion setting every discrete target is text,
so the first term is its L_text.

Every mean is a sum over positions divided by a number of positions (`loss_positions`), by default this batch's own.
Under DDP the LightningModule passes the global batch's counts divided by the world size instead: each rank's loss
is then its share of the global-batch loss, and DDP's average of the ranks' gradients is exactly the gradient of
the loss of the global batch. (The mean of per-rank means is not that loss when ranks hold different numbers of
positions of a modality, which interleaved documents make the rule.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.vocab import IGNORE, IMAGE, MODALITY_NAMES
from models import cpu_kernels
from models.layers import upcast


def loss_positions(batch: dict[str, Tensor], n_modalities: int, image_sources: int = 0) -> dict[str, Tensor]:
    """Positions each modality's loss averages over in this batch: its targets; Transfusion images: patches. With
    `image_sources`, also "image/<k>": the image positions of source k."""
    counts = {MODALITY_NAMES[m]: (batch["target_modality"] == m).sum() for m in range(n_modalities)}
    if "patch_mask" in batch:
        counts["image"] = batch["patch_mask"].sum()
    for k in range(image_sources):
        counts[f"image/{k}"] = _source_positions(batch, k).sum()
    return counts


def _source_positions(batch: dict[str, Tensor], k: int) -> Tensor:
    """(B, L) bool: the positions whose image loss belongs to image source k (patches, or image-code targets)."""
    if "patch_mask" in batch:
        return batch["patch_mask"] & (batch["image_source"] == k)
    return (batch["target_modality"] == IMAGE) & (batch["target_image_source"] == k)


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """(B, L) next-token cross-entropy of (B, L, V) logits, in at least float32; 0 where the target is IGNORE.

    On the CPU the compiled kernel computes it (models/cpu_kernels.py: faster than torch, and it reads bf16 logits
    without a float32 copy); elsewhere, or without the kernel, torch's cross-entropy of the upcast logits.
    """
    if logits.device.type == "cpu" and cpu_kernels.available():
        return cpu_kernels.cross_entropy(logits, targets, IGNORE)
    ce = F.cross_entropy(upcast(logits.flatten(0, 1)), targets.flatten(), ignore_index=IGNORE, reduction="none")
    return ce.view_as(targets)


def multimodal_losses(
    logits: Tensor,
    batch: dict[str, Tensor],
    n_modalities: int,
    patch_pred: Tensor | None = None,
    diffusion_weight: float = 5.0,
    positions: dict[str, Tensor] | None = None,
    image_sources: int = 0,
) -> dict[str, Tensor]:
    """Losses of one batch.

    Args:
        logits: (B, L, V) next-token logits.
        batch: the datamodule's batch (targets, target_modality; for Transfusion noise and patch_mask).
        n_modalities: modalities of the setting (per-modality entries are returned for each).
        patch_pred: (n, P) predicted noise at the patch positions (Transfusion), else None.
        diffusion_weight: λ of the Transfusion total.
        positions: what each modality's sum is divided by (see the module docstring); default
            `loss_positions(batch, n_modalities, image_sources)`, which makes every loss a mean over this batch.
        image_sources: also return "loss_image/<k>", the image loss of each of this many image sources.

    Returns:
        "loss" (the total to optimise) and "loss_<modality>" for every modality of the setting; a modality with no
        position (positions 0) gets NaN, so that averages over batches can skip it (never a fake 0).
    """
    targets, target_modality = batch["targets"], batch["target_modality"]
    positions = loss_positions(batch, n_modalities, image_sources) if positions is None else positions
    ce = token_cross_entropy(logits, targets)
    sums = {MODALITY_NAMES[m]: ce[target_modality == m].sum() for m in range(n_modalities)}
    if patch_pred is not None:
        noise = batch["noise"][batch["patch_mask"]]  # (n, P)
        # Per patch position: the mean over its P elements, so that dividing by the positions gives the MSE.
        squared = (upcast(patch_pred) - noise.to(upcast(patch_pred).dtype)).square()  # (n, P)
        sums["image"] = squared.sum() / noise.shape[-1]
    for k in range(image_sources):
        mine = _source_positions(batch, k)
        if patch_pred is not None:
            sums[f"image/{k}"] = squared[mine[batch["patch_mask"]]].sum() / noise.shape[-1]
        else:
            sums[f"image/{k}"] = ce[mine].sum()
    # A modality without positions keeps its term: a sum over no positions, an exact 0 that is still in the autograd
    # graph, so the layers only it reaches (the LM head, the patch head) still get a (zero) gradient. DDP needs
    # every parameter in every rank's backward, also when one rank's batch lacks a modality.
    one = torch.ones((), device=logits.device)
    means = {name: s / torch.where(positions[name] > 0, positions[name], one) for name, s in sums.items()}
    nan = torch.full((), float("nan"), device=logits.device)
    out = {f"loss_{name}": torch.where(positions[name] > 0, mean, nan) for name, mean in means.items()}
    # Patch positions have no next-token target (their targets are IGNORE), so with continuous images the discrete
    # targets are every modality's but the image's.
    discrete = [m for m in range(n_modalities) if not (patch_pred is not None and MODALITY_NAMES[m] == "image")]
    total = sum(positions[MODALITY_NAMES[m]] for m in discrete)
    targets_lm = torch.isin(target_modality, torch.tensor(discrete, device=target_modality.device))
    out["loss"] = ce[targets_lm].sum() / torch.where(total > 0, total, one)
    if patch_pred is not None:
        out["loss"] = out["loss"] + diffusion_weight * means["image"]
    return out
