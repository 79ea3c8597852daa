"""experiments/export.py: a dense Mamba (Mamba-2) run round-trips through Hugging Face's MambaForCausalLM
(Mamba2ForCausalLM): same logits, and its `generate` gives our greedy tokens; every other arm through the suite's own
config + safetensors layout (same logits, patches included), without the run."""

import pytest
import torch

from experiments.export import load_checkpoint_model, load_exported, main
from experiments.recipes import RunRequest
from experiments.run import train_run
from tests.helpers import SMALL_DATA, TINY_MODEL, trained_folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_cache):
    root = tmp_path_factory.mktemp("export")
    data = {**SMALL_DATA, "cache_dir": small_cache}
    plan = (("chameleon", "mamba"), ("chameleon", "mot"), ("transfusion", "mom"), ("chameleon", "mamba2"),
            ("chameleon", "mom2"))  # fmt: skip
    for setting, arm in plan:
        module = {"model_overrides": TINY_MODEL}
        train_run(RunRequest(setting, arm, max_steps=2, val_every=2, root=root, data=data, module=module))
    return {arm: trained_folder(root, setting, arm) for setting, arm in plan}


def greedy(model, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """Our greedy continuation of `prompt` (1, L) by `new` tokens, through the generation cache."""
    cache = model.allocate_inference_cache(1, prompt.shape[1] + new)
    tokens, step = prompt, prompt
    for _ in range(new):
        step = model(step, torch.zeros_like(step), cache=cache).logits[:, -1:].argmax(-1)
        tokens = torch.cat([tokens, step], dim=1)
    return tokens


@pytest.mark.parametrize("arm, hf_class", [("mamba", "MambaForCausalLM"), ("mamba2", "Mamba2ForCausalLM")])
def test_dense_mamba_round_trips_through_hugging_face(runs, tmp_path, arm, hf_class):
    transformers = pytest.importorskip("transformers")
    assert main([str(runs[arm]), "--out", str(tmp_path / "hf")]) == 0
    ours = load_checkpoint_model(runs[arm])
    theirs = getattr(transformers, hf_class).from_pretrained(tmp_path / "hf").eval()
    tokens = torch.randint(0, ours.cfg.vocab_size, (2, 33))
    with torch.no_grad():
        a, b = ours(tokens, torch.zeros_like(tokens)).logits, theirs(tokens).logits
        assert (a - b).norm() / a.norm() < 1e-5
        prompt = tokens[:1, :7]
        generated = theirs.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12)
        assert torch.equal(generated, greedy(ours, prompt, 12))


@pytest.mark.parametrize("arm", ["mot", "mom", "mom2"])
def test_sparse_arms_round_trip_through_the_own_layout(runs, tmp_path, arm):
    assert main([str(runs[arm]), "--out", str(tmp_path / arm)]) == 0
    ours, back = load_checkpoint_model(runs[arm]), load_exported(tmp_path / arm)
    assert back.cfg == ours.cfg
    tokens = torch.randint(0, ours.cfg.vocab_size, (2, 33))
    ids = torch.randint(0, ours.cfg.n_modalities, (2, 33))
    extra = {}
    if ours.cfg.patch_dim:  # Transfusion: the patch layers come along
        mask = torch.zeros(2, 33, dtype=torch.bool)
        mask[:, 5:9] = True
        extra = dict(patches=torch.randn(2, 33, ours.cfg.patch_dim), patch_mask=mask,
                     timesteps=torch.full((2, 33), 500))  # fmt: skip
    with torch.no_grad():
        a, b = ours(tokens, ids, **extra), back(tokens, ids, **extra)
    assert torch.equal(a.logits, b.logits)
    assert (a.patch_pred is None) == (b.patch_pred is None) and (
        a.patch_pred is None or torch.equal(a.patch_pred, b.patch_pred)
    )


def test_bad_exports_say_why(runs, tmp_path, capsys):
    for args, words in (
        ([str(runs["mot"]), "--format", "hf"], "only a dense model without patch layers of a family"),
        ([str(tmp_path)], "no checkpoint at"),
    ):
        with pytest.raises(SystemExit) as exc:
            main([*args, "--out", str(tmp_path / "x")])
        assert exc.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
