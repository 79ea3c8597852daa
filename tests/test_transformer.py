"""Transformer block: parity with Llama, rotary known answers, MoT equivalences, norm placement, bad input."""

import pytest
import torch

from models.experts import expert_state_dict, upcycle_state_dict
from models.layers import ModalityRouting, image_attention_mask
from models.transformer import TRANSFORMER_PARTS, TransformerBlock, apply_rotary, mlp_hidden, rotary_cos_sin
from tests.helpers import interleaved_ids

D_MODEL, N_HEAD, HIDDEN = 32, 4, 96


def block(n_modalities: int = 1, **kwargs) -> TransformerBlock:
    return TransformerBlock(D_MODEL, N_HEAD, HIDDEN, n_modalities=n_modalities, **kwargs)


def test_mlp_hidden_follows_lingua_rounding():
    """SwiGLU width: 8D/3 rounded up to the multiple (MoT's 163M/760M/1.4B widths 2048, 4096, 5632)."""
    assert [mlp_hidden(d, 256) for d in (768, 1536, 2048)] == [2048, 4096, 5632]
    assert mlp_hidden(128, 64) == 384


def test_dense_stack_equals_hugging_face_llama():
    """Two dense pre-norm blocks without QK-norm (the *_prenorm arms) + final norm equal transformers' LlamaModel."""
    transformers = pytest.importorskip("transformers")
    from models.layers import ModalityRMSNorm

    config = transformers.LlamaConfig(
        hidden_size=D_MODEL, intermediate_size=HIDDEN, num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD,
        num_hidden_layers=2, vocab_size=8, rms_norm_eps=1e-5, max_position_embeddings=64,
    )  # fmt: skip
    ref = transformers.LlamaModel(config).eval()
    ours = torch.nn.ModuleList(block(norm_placement="pre", qk_norm=False) for _ in range(2))
    norm_f = ModalityRMSNorm(D_MODEL)
    names = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm", "attn.wq": "self_attn.q_proj",
             "attn.wk": "self_attn.k_proj", "attn.wv": "self_attn.v_proj", "attn.wo": "self_attn.o_proj",
             "mlp.w1": "mlp.gate_proj", "mlp.w3": "mlp.up_proj", "mlp.w2": "mlp.down_proj"}  # fmt: skip
    with torch.no_grad():
        for i, layer in enumerate(ours):
            for ours_name, ref_name in names.items():
                torch.nn.init.normal_(layer.get_submodule(ours_name).weight, std=0.3)
                ref.get_submodule(f"layers.{i}.{ref_name}").weight.copy_(layer.get_submodule(ours_name).weight)
        torch.nn.init.normal_(norm_f.weight)
        ref.norm.weight.copy_(norm_f.weight)
    x = torch.randn(2, 13, D_MODEL)
    h = x
    for layer in ours:
        h = layer(h, None)
    torch.testing.assert_close(norm_f(h), ref(inputs_embeds=x).last_hidden_state, rtol=1e-4, atol=1e-5)


def test_rotary_scores_depend_only_on_relative_position():
    """Known answer: <rot(q, i), rot(k, j)> depends on i - j only, and position 0 is the identity."""
    head_dim = 8
    cos, sin = rotary_cos_sin(12, head_dim, 10000.0, torch.device("cpu"))
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    rot = lambda v, pos: apply_rotary(v.expand(1, 1, 12, head_dim), cos, sin)[0, 0, pos]  # noqa: E731
    torch.testing.assert_close(rot(q, 0), q)
    torch.testing.assert_close(rot(q, 7) @ rot(k, 4), rot(q, 3) @ rot(k, 0))
    torch.testing.assert_close(rot(q, 11).norm(), q.norm())


@pytest.mark.parametrize("norm_placement", ["pre", "post"])
@pytest.mark.parametrize("decouple", [TRANSFORMER_PARTS, ("mlp",), ("wq", "wk", "wv", "wo")])
def test_mot_with_identical_experts_equals_dense(norm_placement, decouple):
    """Upcycled MoT experts reproduce the dense block exactly, for any set of untied parts and norm placement."""
    dense = block(norm_placement=norm_placement)
    sparse = block(3, decouple=decouple, norm_placement=norm_placement)
    sparse.load_state_dict(upcycle_state_dict(sparse, dense.state_dict()))
    x, ids = torch.randn(2, 17, D_MODEL), interleaved_ids(2, 17, 3)
    torch.testing.assert_close(sparse(x, ModalityRouting(ids, 3)), dense(x, None))


def test_mot_fed_one_modality_equals_dense_with_that_expert():
    """A MoT block fed only modality k equals the dense block holding expert k's weights."""
    sparse, dense = block(2), block()
    for k in (0, 1):
        dense.load_state_dict(expert_state_dict(sparse, k))
        x = torch.randn(2, 11, D_MODEL)
        torch.testing.assert_close(sparse(x, ModalityRouting(torch.full((2, 11), k), 2)), dense(x, None))


def test_attention_is_global_across_modalities():
    """Attention is shared over the whole sequence: a text token's output depends on an earlier image token."""
    b = block(2)
    ids = torch.tensor([[1, 1, 0, 0, 0]])
    x = torch.randn(1, 5, D_MODEL)
    y = b(x, ModalityRouting(ids, 2))
    x2 = x.clone()
    x2[0, 0] += 1.0
    assert not torch.allclose(b(x2, ModalityRouting(ids, 2))[0, 4], y[0, 4])


@pytest.mark.parametrize("norm_placement", ["pre", "post"])
def test_norm_placement(norm_placement):
    """pre: x + f(norm(x)); post (MoT's SwinNorm): x + norm(f(x)), composed from the block's own sublayers."""
    b = block(norm_placement=norm_placement)
    torch.nn.init.normal_(b.attn_norm.weight)
    torch.nn.init.normal_(b.mlp_norm.weight)
    x = torch.randn(1, 6, D_MODEL)
    h = x
    for norm, f in ((b.attn_norm, b.attn), (b.mlp_norm, b.mlp)):
        h = h + (f(norm(h), None) if norm_placement == "pre" else norm(f(h, None)))
    torch.testing.assert_close(b(x, None), h)


def test_causal():
    """Changing position t+1 leaves outputs at positions <= t unchanged (dense and MoT)."""
    for b, ids in ((block(), None), (block(2), interleaved_ids(1, 12, 2))):
        routing = ModalityRouting(ids, 2) if ids is not None else None
        x = torch.randn(1, 12, D_MODEL)
        x2 = x.clone()
        x2[:, 7] += 1.0
        y, y2 = b(x, routing), b(x2, routing)
        torch.testing.assert_close(y2[:, :7], y[:, :7], rtol=0, atol=0)
        assert not torch.allclose(y2[:, 7:], y[:, 7:])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(decouple=("mlp", "ffn")), r"unknown transformer part\(s\) to decouple: \['ffn'\].*'wq'"),
        (dict(norm_placement="sandwich"), r"unknown norm_placement 'sandwich'.*'pre', 'post'"),
    ],
)
def test_bad_arguments(kwargs, match):
    """Unknown untied parts or norm placements fail with the bad value and the valid choices."""
    with pytest.raises(ValueError, match=match):
        block(2, **kwargs)
    with pytest.raises(ValueError, match="not divisible"):
        TransformerBlock(30, 4, 64)


@pytest.mark.parametrize(("norm_placement", "qk_norm"), [("post", True), ("pre", False)])
@pytest.mark.parametrize("images", [False, True])
def test_mot_block_with_mixed_modalities_equals_a_per_token_reference(norm_placement, qk_norm, images):
    """Distinct experts, interleaved modalities: the block equals a plain re-derivation, token by token.

    The reference applies each token's own modality weights (projections, QK-norms, norms) one token at a time, then
    explicit rotary embeddings, an explicit softmax over the keys each query may see (every earlier token of any
    modality; with images, also every patch of its own image), and the SwiGLU, with the residuals as placed: the
    MoT / Chameleon block (norm on each sublayer's output, QK-norm) and the Llama block (pre-norm).
    """
    torch.manual_seed(0)
    b = block(2, norm_placement=norm_placement, qk_norm=qk_norm)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.1 * torch.randn_like(p))  # norms away from 1 and experts clearly distinct
    x, ids = torch.randn(2, 13, D_MODEL), interleaved_ids(2, 13, 2)
    patch_mask = ids == 1 if images else None  # modality 1 as continuous image patches: runs are images

    def per_token(weight, h, ids_b):  # weight [M, out, in]; h (L, in) -> (L, out)
        return torch.stack([weight[m] @ row for row, m in zip(h, ids_b, strict=True)])

    def norm(h, weight, ids_b):
        scale = torch.stack([weight[m] for m in ids_b])
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * scale

    k_dim = D_MODEL // N_HEAD
    cos, sin = rotary_cos_sin(13, k_dim, 1e4, x.device)

    def visible(mask_b, i, j):  # may query i see key j: earlier, or a patch of the same image (a run of patches)
        if j <= i:
            return True
        return bool(mask_b is not None and mask_b[i] and mask_b[j] and mask_b[min(i, j) : max(i, j) + 1].all())

    def residual(h, f, norm_weight, ids_b):
        return h + f(norm(h, norm_weight, ids_b)) if norm_placement == "pre" else h + norm(f(h), norm_weight, ids_b)

    def attention(h, ids_b, mask_b):
        q, k, v = (per_token(getattr(b.attn, n).weight, h, ids_b).view(13, N_HEAD, k_dim) for n in ("wq", "wk", "wv"))
        if qk_norm:  # per head, each token with its modality's scale
            q = torch.stack([norm(q[t], b.attn.q_norm.weight, [ids_b[t]] * N_HEAD) for t in range(13)])
            k = torch.stack([norm(k[t], b.attn.k_norm.weight, [ids_b[t]] * N_HEAD) for t in range(13)])
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        q, k = apply_rotary(q[None], cos, sin)[0], apply_rotary(k[None], cos, sin)[0]
        scores = q @ k.transpose(-1, -2) / k_dim**0.5
        allowed = torch.tensor([[visible(mask_b, i, j) for j in range(13)] for i in range(13)])
        att = (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v).transpose(0, 1).reshape(13, D_MODEL)
        return per_token(b.attn.wo.weight, att, ids_b)

    def mlp(h, ids_b):
        gate = torch.nn.functional.silu(per_token(b.mlp.w1.weight, h, ids_b)) * per_token(b.mlp.w3.weight, h, ids_b)
        return per_token(b.mlp.w2.weight, gate, ids_b)

    ref = []
    for batch_index, (xb, ids_b) in enumerate(zip(x, ids, strict=True)):
        mask_b = patch_mask[batch_index] if images else None
        xb = residual(xb, lambda h, i=ids_b, m=mask_b: attention(h, i, m), b.attn_norm.weight, ids_b)
        ref.append(residual(xb, lambda h, i=ids_b: mlp(h, i), b.mlp_norm.weight, ids_b))
    attn_mask = image_attention_mask(patch_mask) if images else None
    torch.testing.assert_close(b(x, ModalityRouting(ids, 2), attn_mask), torch.stack(ref), rtol=1e-4, atol=1e-5)
