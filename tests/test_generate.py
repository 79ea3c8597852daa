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


def test_a_cache_refuses_positions_beyond_its_size_and_patches():
    model = small_model("mot")
    cache = model.allocate_inference_cache(1, 4)
    tokens, ids = torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="the cache holds 4 positions; 5 were asked for"):
        model(tokens, ids, cache=cache)
    patchy = small_model("mom", patch_dim=4)
    mask = torch.zeros(1, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="continuous patches are not supported with a cache"):
        patchy(tokens, ids, torch.zeros(1, 5, 4), mask, torch.zeros(1, 5, dtype=torch.long),
               cache=patchy.allocate_inference_cache(1, 5))  # fmt: skip
