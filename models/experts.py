"""A sparse module's state dict against its dense one: which parameters hold one copy per modality, upcycling a
dense checkpoint into every expert, and exporting one expert as a dense checkpoint.

Every module that holds per-modality parameters lists them in its own `expert_parameters()` ({its parameter name:
M}): the per-modality layers (models/layers.py) and any block with per-modality parameters of its own (Mamba-2's
per-head values). Upcycling, expert export and the active-parameter count (`MultiModalLM.param_count`) read that.
"""

from __future__ import annotations

from torch import Tensor, nn


def expert_parameters(module: nn.Module) -> dict[str, int]:
    """State-dict keys of `module`'s parameters that carry a leading modality axis, with their number of experts:
    whatever each submodule's own `expert_parameters()` ({its parameter name: M}) lists (the Modality* layers here,
    and any block that holds per-modality parameters of its own)."""
    keys = {}
    for name, sub in module.named_modules():
        own = getattr(sub, "expert_parameters", None)
        for pname, n in (own() if callable(own) else {}).items():
            keys[f"{name}.{pname}" if name else pname] = n
    return keys


def upcycle_state_dict(sparse: nn.Module, dense_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A dense module's state dict (same keys, no modality axis), turned into one that `sparse` (any module holding
    per-modality parameters, `expert_parameters`) loads with strict=True: every expert gets the dense weights."""
    target, sparse_keys = sparse.state_dict(), expert_parameters(sparse)
    own = {name for name, _ in sparse.named_buffers()}  # routing state a dense model has not (the token-hash table)
    missing = sorted(set(target) - set(dense_state) - own)
    unexpected = sorted(set(dense_state) - set(target))
    if missing or unexpected:
        raise KeyError(f"dense state dict does not match the sparse module: missing {missing}, unexpected {unexpected}")
    out = {key: target[key] for key in own - set(dense_state) if key in target}
    for key, value in dense_state.items():
        want = target[key].shape
        if key in sparse_keys and value.shape == want[1:]:
            out[key] = value.unsqueeze(0).expand(want).clone()
        elif value.shape == want:
            out[key] = value
        else:
            raise ValueError(f"{key}: dense shape {tuple(value.shape)} does not fit sparse shape {tuple(want)}")
    return out


def expert_state_dict(sparse: nn.Module, k: int) -> dict[str, Tensor]:
    """Expert k of a sparse module, exported as the state dict of the dense module (shared parts unchanged)."""
    sparse_keys = expert_parameters(sparse)
    out = {}
    for key, value in sparse.state_dict().items():
        if key in sparse_keys:
            if not 0 <= k < sparse_keys[key]:
                raise ValueError(f"expert {k} does not exist: {key} has experts 0..{sparse_keys[key] - 1}")
            value = value[k].clone()
        out[key] = value
    return out
