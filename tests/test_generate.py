"""Generation state for every arm: a prompt, then one token at a time through the cache, gives the logits of the
whole sequence in one forward (float32), with modality switches mid-sequence; the one-step recurrence equals the
reference scan step by step."""

import pytest
import torch

from models import ARMS, ModelConfig, build_model
from models.scan import selective_scan_ref, selective_state_update
from tests.helpers import interleaved_ids

VOCAB, MODALITIES, BATCH, LENGTH = 64, 3, 2, 24


def small_model(arm: str, **overrides):
    cfg = ModelConfig.from_scale("tiny", arch=arm, vocab_size=VOCAB, n_modalities=MODALITIES, d_model=32, n_layer=2,
                                 **overrides)  # fmt: skip
    torch.manual_seed(0)
    return build_model(cfg).eval()


def stepped(model, tokens, modality_ids, prompt: int):
    """Logits of the prompt in one cached call, then of each further token alone."""
    cache = model.allocate_inference_cache(tokens.shape[0], tokens.shape[1])
    parts = [model(tokens[:, :prompt], modality_ids[:, :prompt], cache=cache).logits]
    for t in range(prompt, tokens.shape[1]):
        parts.append(model(tokens[:, t : t + 1], modality_ids[:, t : t + 1], cache=cache).logits)
    assert cache.seqlen_offset == tokens.shape[1]
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("prompt", [1, 9])
@pytest.mark.parametrize("arm", sorted(ARMS))
def test_prompt_then_steps_equal_the_full_forward(arm, prompt):
    model = small_model(arm)
    torch.manual_seed(1)
    tokens = torch.randint(0, VOCAB, (BATCH, LENGTH))
    modality_ids = interleaved_ids(BATCH, LENGTH, MODALITIES, seed=1)  # switches mid-sequence, every modality
    with torch.no_grad():
        full = model(tokens, modality_ids).logits
        got = stepped(model, tokens, modality_ids, prompt)
    assert (got - full).norm() / full.norm() < 1e-5


def test_the_step_is_the_reference_recurrence():
    """selective_state_update, applied L times, equals selective_scan_ref (mamba-ssm's semantics), in float64."""
    torch.manual_seed(2)
    b, e, n, length = 2, 6, 4, 11
    g = lambda *shape: torch.randn(*shape, dtype=torch.float64)  # noqa: E731
    u, delta, z, B, C = g(b, e, length), g(b, e, length), g(b, e, length), g(b, n, length), g(b, n, length)
    A, D, bias = -torch.rand(e, n, dtype=torch.float64) - 0.1, g(e), g(e)
    want = selective_scan_ref(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)
    state = torch.zeros(b, e, n, dtype=torch.float64)
    ys = [
        selective_state_update(
            state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D=D, z=z[..., t], dt_bias=bias, dt_softplus=True
        )  # fmt: skip
        for t in range(length)
    ]
    torch.testing.assert_close(torch.stack(ys, dim=-1), want, rtol=1e-12, atol=1e-12)


def test_a_cache_refuses_positions_beyond_its_size():
    model = small_model("mot")
    cache = model.allocate_inference_cache(1, 4)
    tokens, ids = torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="the cache holds 4 positions; 5 were asked for"):
        model(tokens, ids, cache=cache)


@pytest.mark.parametrize("arm", ["mamba", "mom", "transformer", "mot"])
def test_transfusion_patches_through_the_cache_equal_the_full_forward(arm):
    """Text, a continuous image (7 patches, bidirectional within it for the transformers), text: in pieces through
    the cache, the logits and the patch predictions equal one full forward. Mamba steps every position; a
    transformer takes the image in one call, the only way its patches can see each other."""
    model, width = small_model(arm, patch_dim=6), 6
    torch.manual_seed(3)
    length, image = 20, slice(8, 15)
    tokens = torch.randint(0, VOCAB, (BATCH, length))
    mask = torch.zeros(BATCH, length, dtype=torch.bool)
    mask[:, image] = True
    ids = mask.long()  # text 0, the image 1
    patches, times = torch.randn(BATCH, length, width), torch.full((BATCH, length), 300)
    with torch.no_grad():
        full = model(tokens, ids, patches, mask, times)
        cache = model.allocate_inference_cache(BATCH, length)
        pieces = (
            [(0, 8), (8, 15)] if model.cfg.family.image_attention else [(0, 8), *((t, t + 1) for t in range(8, 15))]
        )
        pieces += [(t, t + 1) for t in range(15, length)]
        logits, preds = [], []
        for a, b in pieces:
            out = model(tokens[:, a:b], ids[:, a:b], patches[:, a:b], mask[:, a:b], times[:, a:b], cache=cache)
            logits.append(out.logits)
            if mask[:, a:b].any():
                preds.append(out.patch_pred.view(BATCH, -1, width))
    assert (torch.cat(logits, 1) - full.logits).norm() / full.logits.norm() < 1e-5
    got = torch.cat(preds, 1).reshape(-1, width)
    assert (got - full.patch_pred).norm() / full.patch_pred.norm() < 1e-5
