"""Lightning DataModules for the Transfusion, Chameleon and three-modality settings (shared by every arm)."""
