"""Per-modality training losses, shared by every arm (plain torch; the LightningModule only calls this).

Discrete positions: next-token cross-entropy. A position's loss belongs to the modality of its *target* (position t
predicts token t + 1). Transfusion image positions: DDPM ε-prediction MSE, the mean over patch elements.

Totals: Chameleon / three-modality: cross-entropy averaged over every target position (all modalities together);
Transfusion: L_text + λ · L_image, with L_text the cross-entropy over text targets and λ = 5 by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.vocab import IGNORE, MODALITY_NAMES


def multimodal_losses(
    logits: Tensor,
    batch: dict[str, Tensor],
    n_modalities: int,
    patch_pred: Tensor | None = None,
    diffusion_weight: float = 5.0,
) -> dict[str, Tensor]:
    """Losses of one batch.

    Args:
        logits: (B, L, V) next-token logits.
        batch: the datamodule's batch (targets, target_modality; for Transfusion noise and patch_mask).
        n_modalities: modalities of the setting (per-modality entries are returned for each).
        patch_pred: (n, P) predicted noise at the patch positions (Transfusion), else None.
        diffusion_weight: λ of the Transfusion total.

    Returns:
        "loss" (the total to optimise) and "loss_<modality>" for every modality of the setting; a modality with no
        position in the batch gets NaN, so that averages over batches can skip it (never a fake 0).
    """
    targets, target_modality = batch["targets"], batch["target_modality"]
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="none")
    ce = ce.view_as(targets)
    out: dict[str, Tensor] = {}
    nan = logits.new_tensor(float("nan"), dtype=torch.float32)
    for m in range(n_modalities):
        mask = target_modality == m
        out[f"loss_{MODALITY_NAMES[m]}"] = ce[mask].mean() if mask.any() else nan
    if patch_pred is not None:
        noise = batch["noise"][batch["patch_mask"]]
        out["loss_image"] = F.mse_loss(patch_pred.float(), noise.float()) if noise.numel() else nan
        # Absent terms contribute nothing; a NaN from a present term must still show (non-finite loss check).
        total = out["loss_text"] if (target_modality == 0).any() else logits.new_zeros((), dtype=torch.float32)
        out["loss"] = total + diffusion_weight * out["loss_image"] if noise.numel() else total
    else:
        valid = targets != IGNORE
        out["loss"] = ce[valid].mean()
    return out
