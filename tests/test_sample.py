"""experiments/sample.py: DDIM recovers a known image from an exact noise predictor; text and images are sampled from
trained runs (Chameleon codes through the VQ codebook, Transfusion patches by DDIM) reproducibly per seed; bad
requests fail with a message naming the value."""

import json

import pytest
import torch
from PIL import Image

from datamodules.sequences import cosine_alpha_bar
from datamodules.vocab import BOS, TEXT
from experiments.recipes import RunRequest
from experiments.run import train_run
from experiments.sample import SampleError, ddim_sample, load_sampler, main
from tests.helpers import SMALL_DATA, TINY_MODEL, trained_folder


def test_ddim_with_the_true_noise_returns_the_clean_sample():
    """A predictor that knows x0 returns the exact noise of every x_t; DDIM must then land on x0 from any start."""
    torch.manual_seed(0)
    x0 = torch.rand(6, 5, dtype=torch.float64) * 2 - 1  # float64: at t = 999 alpha_bar is ~1e-9
    alpha_bar = torch.as_tensor(cosine_alpha_bar(), dtype=torch.float64)

    def true_noise(x, t):
        return (x - alpha_bar[t].sqrt() * x0) / (1 - alpha_bar[t]).sqrt()

    low, high = torch.full((5,), -1.0, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    for steps in (1, 7, 40):
        got = ddim_sample(true_noise, torch.randn(6, 5, dtype=torch.float64), steps, low=low, high=high)
        torch.testing.assert_close(got, x0, rtol=0, atol=1e-9)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_cache):
    """Two runs of two steps: MoT on Chameleon (discrete codes), MoM on Transfusion (continuous patches)."""
    root = tmp_path_factory.mktemp("sample")
    data = {**SMALL_DATA, "cache_dir": small_cache}
    for setting, arm in (("chameleon", "mot"), ("transfusion", "mom")):
        module = {"model_overrides": TINY_MODEL}
        train_run(RunRequest(setting, arm, max_steps=2, val_every=2, root=root, data=data, module=module))
    return {s: trained_folder(root, s, a) for s, a in (("chameleon", "mot"), ("transfusion", "mom"))}


@pytest.mark.parametrize("setting", ["chameleon", "transfusion"])
def test_samples_are_written_and_reproducible(runs, tmp_path, setting, capsys):
    args = [str(runs[setting]), "--prompt", "It is a truth 🙂", "--captions", "a shirt", "a bag", "--max-new-tokens",
            "12", "--diffusion-steps", "5"]  # fmt: skip
    outs = []
    for name in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / name)]) == 0
        outs.append(tmp_path / name)
    with Image.open(outs[0] / "images.png") as image:
        assert image.width >= 2 * (image.height - 24)  # two images side by side under a 24-pixel caption band
    record = json.loads((outs[0] / "samples.json").read_text())
    assert record["settings"]["seed"] == 0 and record["captions"] == ["a shirt", "a bag"]
    assert "prompt: It is a truth 🙂\nsample: " in (outs[0] / "text.txt").read_text()
    for name in ("text.txt", "images.png"):  # the same seed, the same samples
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_images_are_pixels_of_the_runs_source(runs):
    sampler = load_sampler(runs["chameleon"], seed=3)
    image = sampler.image("a photo of a shirt", source=0)
    src = sampler.dm.corpus.images[0]
    assert image.shape == src.vq.decode(src.codes[:1]).shape[1:] and 0 <= image.min() and image.max() <= 1


def test_bad_requests_name_the_value(runs, tmp_path, capsys):
    cases = [
        ([str(tmp_path)], "no checkpoint at"),
        ([str(runs["chameleon"]), "--captions", "x", "--image-source", "7"], "--image-source 7 is not one of 0..1"),
        ([str(runs["chameleon"]), "--max-new-tokens", "0"], "--max-new-tokens must be >= 1; got 0"),
        ([str(runs["chameleon"]), "--max-new-tokens", "500"], "was trained on sequences of 128"),
    ]
    for args, words in cases:
        with pytest.raises(SystemExit) as exc:
            main([*args, "--out", str(tmp_path / "out")])
        assert exc.value.code == 2
        assert words in capsys.readouterr().err, words
    assert not (tmp_path / "out").exists()
    sampler = load_sampler(runs["chameleon"])
    sampler.dm.corpus.images = []
    with pytest.raises(SampleError, match="no images: ask for text only"):
        sampler.image("a shirt")


def test_a_recurrent_arm_samples_past_its_training_length_as_a_full_forward_would(runs):
    """A Mamba arm's recurrent state has no position limit: 200 greedy tokens past a run trained on 128, each the
    argmax of a full forward pass over everything before it."""
    sampler = load_sampler(runs["transfusion"], temperature=0)
    prompt = [BOS, *sampler.encode("It is")]
    new = sampler._continue(prompt, 200)  # no stop token: every one of the 200 steps is generated
    assert len(new) == 200
    tokens = torch.tensor([prompt + new[:-1]])
    modality = torch.cat([torch.as_tensor(sampler.vocab.modality_of(tokens[:, : len(prompt)])),
                          torch.full((1, len(new) - 1), TEXT)], dim=1)  # fmt: skip
    with torch.no_grad():
        logits = sampler.model(tokens, modality).logits[0, len(prompt) - 1 :]
    assert logits.argmax(-1).tolist() == new
