"""Lightning DataModules for the Transfusion, Chameleon and three-modality settings (shared by every arm)."""

from datamodules.multimodal import SETTINGS, MultiModalDataModule

__all__ = ["SETTINGS", "MultiModalDataModule"]
