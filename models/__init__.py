"""The suite's architectures, in plain torch: dense Mamba, Mixture-of-Mamba, Mamba-2, Mixture-of-Mamba-2, Transformer,
Mixture-of-Transformers, and the sparse arms' controls (models/arms.py).

from models import ModelConfig, build_model
model = build_model(ModelConfig.from_scale("tiny", arch="mom", vocab_size=4096, n_modalities=2))
out = model(tokens, modality_ids)          # out.logits: (B, L, V)
"""

from models.arms import ARMS, ROUTINGS, Arm, get_arm, register_arm
from models.config import ModelConfig, ParamCount, non_embedding_params, param_count
from models.experts import expert_state_dict, upcycle_state_dict
from models.family import PAPER_SCALES, SCALES, Family, check_scale
from models.layers import ModalityLinear, ModalityRMSNorm, ModalityRouting
from models.lm import LMOutput, MultiModalLM, build_model, position_hash_ids
from models.mamba import MAMBA, MAMBA_PARTS, MambaMixer
from models.mamba2 import MAMBA2, MAMBA2_PARTS, Mamba2Mixer
from models.scan import BACKENDS, resolve_backend, selective_scan, selective_scan_ref
from models.transformer import TRANSFORMER, TRANSFORMER_PARTS, TransformerBlock

__all__ = [
    "ARMS",
    "BACKENDS",
    "MAMBA",
    "MAMBA2",
    "MAMBA2_PARTS",
    "MAMBA_PARTS",
    "PAPER_SCALES",
    "ROUTINGS",
    "SCALES",
    "TRANSFORMER",
    "TRANSFORMER_PARTS",
    "Arm",
    "Family",
    "LMOutput",
    "Mamba2Mixer",
    "MambaMixer",
    "ModalityLinear",
    "ModalityRMSNorm",
    "ModalityRouting",
    "ModelConfig",
    "MultiModalLM",
    "ParamCount",
    "TransformerBlock",
    "build_model",
    "check_scale",
    "expert_state_dict",
    "get_arm",
    "non_embedding_params",
    "param_count",
    "position_hash_ids",
    "register_arm",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
    "upcycle_state_dict",
]
