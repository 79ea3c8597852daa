"""The suite's architectures, in plain torch: dense Mamba, Mixture-of-Mamba, Transformer, Mixture-of-Transformers,
and the two sparse arms' position-hash controls (mom_hash, mot_hash: same experts, routed by position).

from models import ModelConfig, build_model
model = build_model(ModelConfig.from_scale("tiny", arch="mom", vocab_size=4096, n_modalities=2))
out = model(tokens, modality_ids)          # out.logits: (B, L, V)
"""

from models.config import ARCHS, DENSE_OF, FAMILY, ROUTING, SCALES, ModelConfig, ParamCount, param_count
from models.layers import (
    ModalityLinear,
    ModalityRMSNorm,
    ModalityRouting,
    expert_state_dict,
    upcycle_state_dict,
)
from models.lm import LMOutput, MultiModalLM, build_model, position_hash_ids
from models.mamba import MAMBA_PARTS, MambaMixer
from models.scan import BACKENDS, resolve_backend, selective_scan, selective_scan_ref
from models.transformer import TRANSFORMER_PARTS, TransformerBlock

__all__ = [
    "ARCHS",
    "BACKENDS",
    "DENSE_OF",
    "FAMILY",
    "MAMBA_PARTS",
    "ROUTING",
    "SCALES",
    "TRANSFORMER_PARTS",
    "LMOutput",
    "MambaMixer",
    "ModalityLinear",
    "ModalityRMSNorm",
    "ModalityRouting",
    "ModelConfig",
    "MultiModalLM",
    "ParamCount",
    "TransformerBlock",
    "build_model",
    "expert_state_dict",
    "param_count",
    "position_hash_ids",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
    "upcycle_state_dict",
]
