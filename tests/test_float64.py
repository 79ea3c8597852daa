"""Every arm runs in float64 end to end, and agrees with its float32 run: the model (outputs and gradients, with
continuous patches) and a whole training run through Lightning's 64-bit precision."""

import pytest
import torch

from analysis.run_record import read_summary
from experiments.recipes import RunRequest
from experiments.run import train_run
from models import ARMS, ModelConfig, build_model
from tests.helpers import SMALL_DATA, TINY_MODEL, interleaved_ids, trained_folder

V, P = 64, 12


def batch(dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = interleaved_ids(2, 24, 2)
    return dict(
        tokens=torch.randint(0, V, (2, 24), generator=g),
        modality_ids=ids,
        patches=torch.randn(2, 24, P, generator=g).to(dtype),
        patch_mask=ids == 1,
        timesteps=torch.randint(0, 1000, (2, 24), generator=g),
    )


@pytest.mark.parametrize("arch", list(ARMS))
def test_every_arm_in_float64_matches_float32(arch):
    cfg = ModelConfig(arch=arch, vocab_size=V, n_modalities=2, patch_dim=P, d_model=32, n_layer=2, n_head=4,
                      mlp_multiple_of=32, d_state=8)  # fmt: skip
    single = build_model(cfg)
    double = build_model(cfg).double()
    double.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in single.state_dict().items()})
    outs = []
    for model, dtype in ((single, torch.float32), (double, torch.float64)):
        out = model(**batch(dtype))
        assert out.logits.dtype == out.patch_pred.dtype == dtype
        (out.logits.square().mean() + out.patch_pred.square().mean()).backward()
        outs.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (o32, g32), (o64, g64) = outs
    torch.testing.assert_close(o64.logits.float(), o32.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(o64.patch_pred.float(), o32.patch_pred, rtol=1e-4, atol=1e-5)
    for name, grad in g64.items():
        assert grad.dtype == torch.float64, name
        torch.testing.assert_close(grad.float(), g32[name], rtol=1e-3, atol=1e-6, msg=name)


def test_a_float64_training_run_matches_float32(tmp_path, small_cache):
    """Lightning's "64-true" precision trains a Transfusion MoM run whose losses equal the float32 run's closely."""
    data = {**SMALL_DATA, "cache_dir": small_cache}
    common = dict(max_steps=4, val_every=2, data=data, module={"model_overrides": TINY_MODEL})
    runs = {}
    for precision in ("32-true", "64-true"):
        root = tmp_path / precision
        train_run(RunRequest("transfusion", "mom", root=root, trainer={"precision": precision}, **common))
        runs[precision] = read_summary(trained_folder(root, "transfusion", "mom"))
    assert runs["64-true"].status == "finished"
    for key, value in runs["32-true"].final_val_loss.items():
        assert runs["64-true"].final_val_loss[key] == pytest.approx(value, rel=1e-4), key
