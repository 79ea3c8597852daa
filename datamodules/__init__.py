"""Lightning DataModules for the Transfusion, Chameleon and three-modality settings (shared by every arm)."""

from datamodules.multimodal import MultiModalDataModule
from datamodules.settings import SETTINGS, Setting, get_setting, register_setting

__all__ = ["SETTINGS", "MultiModalDataModule", "Setting", "get_setting", "register_setting"]
