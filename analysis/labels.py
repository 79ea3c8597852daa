"""How arms, modalities and losses are named, ordered and coloured in tables and figures.

Arms' labels, colours and order come from the arm registry (models/arms.py), loss units from the settings registry
(datamodules/settings.py); this module only adds what is presentation alone.
"""

from __future__ import annotations

from analysis.run_record import LossKey
from datamodules.settings import SETTINGS
from datamodules.vocab import MODALITY_NAMES
from models.arms import ARMS

# Extra validation sets get their own rows and panels, named by what they hold.
VALSET_LABELS = {"val": "", "val_real_speech": "real recordings"}


def arm_label(arm: str) -> str:
    """'mom' -> 'MoM', 'mom_hash' -> 'MoM-pos-hash'; an arm the registry does not know keeps its name."""
    return ARMS[arm].label if arm in ARMS else arm


def arm_rank(arm: str) -> tuple[int, str]:
    """Sort key: registered arms in registration order, then any other by name."""
    order = list(ARMS)
    return (order.index(arm) if arm in order else len(order), arm)


def arm_colour(arm: str) -> str:
    """A fixed colour per arm, so one arm looks the same in every figure."""
    return ARMS[arm].colour if arm in ARMS else f"C{sum(map(ord, arm)) % 10}"


def dense_partner(arm: str) -> str | None:
    """The dense arm a sparse arm (or a twin) is compared with; None for a baseline or an unknown arm."""
    return ARMS[arm].dense if arm in ARMS else None


def is_twin(variant: str) -> bool:
    """Whether `variant` is a dense arm's twin (the null control, models/arms.py)."""
    return variant in ARMS and ARMS[variant].is_twin


def pair_label(variant: str) -> str:
    """'MoM vs Mamba'; a twin's 'Mamba vs Mamba (null)'."""
    dense = arm_label(dense_partner(variant))
    return f"{dense} vs {dense} (null)" if is_twin(variant) else f"{arm_label(variant)} vs {dense}"


def modality_rank(modality: str) -> tuple[int, str]:
    """Sort key: text, image, speech, then any other modality by name."""
    return (MODALITY_NAMES.index(modality) if modality in MODALITY_NAMES else len(MODALITY_NAMES), modality)


def loss_rank(key: LossKey) -> tuple:
    """Sort key: validation before training, the primary set 'val' first, then text, image, speech."""
    return (key.kind != "val", key.valset != "val", key.valset, modality_rank(key.modality), key.source)


def loss_label(key: LossKey) -> str:
    """'image', 'image (emoji)' for one image source, 'speech (real recordings)' for an extra validation set."""
    extra = [part for part in (key.source, VALSET_LABELS.get(key.valset, key.valset)) if part]
    return f"{key.modality} ({', '.join(extra)})" if extra else key.modality


def loss_unit(setting: str, modality: str) -> str:
    """The unit of a setting's loss: the diffusion MSE for continuous images, else cross-entropy in nats."""
    return SETTINGS[setting].loss_unit(modality) if setting in SETTINGS else "nats"


KIND_WORDS = {"train": "training", "val": "validation"}  # a loss kind (LossKey.kind) in a sentence


def axis_label(setting: str, key: LossKey) -> str:
    """Y-axis label with the unit, e.g. 'validation loss (nats)' or 'training diffusion MSE'."""
    stage = KIND_WORDS[key.kind]
    unit = loss_unit(setting, key.modality)
    return f"{stage} diffusion MSE" if unit == "diffusion MSE" else f"{stage} loss ({unit})"


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"
