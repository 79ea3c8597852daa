"""The settings registry: the papers' three multi-modal settings, defined once and read by everything else.

    transfusion       text + continuous image patches (diffusion loss on the patches)
    chameleon         text + discrete image codes (next-token loss on every token)
    three_modality    text + discrete image codes + discrete speech units

The datamodule builds a setting's documents from its modalities and image representation, the model gets one
expert per modality, and the report reads the loss units and the papers' vocabulary from here. A new setting that
reuses the existing modalities is one `register_setting(Setting(...))` call.
"""

from __future__ import annotations

from dataclasses import dataclass

from datamodules.vocab import MODALITY_NAMES

IMAGE_REPRESENTATIONS = ("continuous", "discrete")


@dataclass(frozen=True)
class Setting:
    """One multi-modal setting.

    Attributes:
        name: the setting's name on the command line, in run folders and reports.
        modalities: its modalities, the first k of MODALITY_NAMES (modality ids are fixed: text 0, image 1, speech 2).
        image: how images enter the sequence: "continuous" patches (with the diffusion loss) or "discrete" VQ codes.
        paper_vocab: the vocabulary size of the papers' models in this setting (docs/papers.md), for the presets.
    """

    name: str
    modalities: tuple[str, ...]
    image: str
    paper_vocab: int

    def __post_init__(self) -> None:
        if self.modalities != MODALITY_NAMES[: len(self.modalities)] or len(self.modalities) < 2:
            raise ValueError(
                f"setting {self.name!r}: modalities must be the first k >= 2 of {list(MODALITY_NAMES)} "
                f"(modality ids are fixed), got {list(self.modalities)}"
            )
        if self.image not in IMAGE_REPRESENTATIONS:
            raise ValueError(f"setting {self.name!r}: image must be one of {list(IMAGE_REPRESENTATIONS)}")

    @property
    def n_modalities(self) -> int:
        return len(self.modalities)

    @property
    def continuous(self) -> bool:
        """Images are continuous patches with a diffusion loss (Transfusion)."""
        return self.image == "continuous"

    @property
    def speech(self) -> bool:
        return "speech" in self.modalities

    def loss_unit(self, modality: str) -> str:
        """The unit of a modality's loss: the diffusion ε-prediction MSE for continuous images, else nats."""
        return "diffusion MSE" if self.continuous and modality == "image" else "nats"


SETTINGS: dict[str, Setting] = {}


def register_setting(setting: Setting) -> Setting:
    if setting.name in SETTINGS:
        raise ValueError(f"a setting named {setting.name!r} is registered already")
    SETTINGS[setting.name] = setting
    return setting


def get_setting(name: str) -> Setting:
    """The registered setting `name`; ValueError listing the valid names otherwise."""
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; valid choices are {list(SETTINGS)}")
    return SETTINGS[name]


# The papers' vocabularies: Transfusion's Llama-2 BPE; Chameleon's 65,536 with the image codes inside.
register_setting(Setting("transfusion", ("text", "image"), "continuous", paper_vocab=32000))
register_setting(Setting("chameleon", ("text", "image"), "discrete", paper_vocab=65536))
register_setting(Setting("three_modality", ("text", "image", "speech"), "discrete", paper_vocab=65536))
