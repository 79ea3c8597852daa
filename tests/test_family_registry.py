"""A model family is one registration: a family defined in this file alone (its block, sizes, parameter count and
FLOPs, and its dense and sparse arms) is planned and trained by compare.py, FLOP-counted, paired in the report,
sampled from and exported, with no other file of the suite changed."""

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analysis.run_record import read_summary
from experiments import export, sample
from experiments.compare import main
from models import ARMS, SCALES, Arm, ModelConfig, build_model, register_arm
from models.family import Family
from models.layers import ModalityLinear, ModalityRouting
from tests.helpers import trained_folder
from tests.test_compare import small


@dataclass
class ShiftCache:
    """The block's generation state: the last input it saw (zeros before the first)."""

    last: Tensor


class ShiftBlock(nn.Module):
    """x_t + out(silu(mix([x_t, x_{t-1}]))): a token mixer with a state of one token; `mix` and `out` may be
    decoupled per modality."""

    def __init__(self, d_model: int, n_modalities: int, decouple: tuple[str, ...]) -> None:
        super().__init__()
        self.mix = ModalityLinear(2 * d_model, 2 * d_model, n_modalities if "mix" in decouple else 1, bias=False)
        self.out = ModalityLinear(2 * d_model, d_model, n_modalities if "out" in decouple else 1, bias=False)

    def forward(self, x: Tensor, routing: ModalityRouting | None, cache: ShiftCache | None = None) -> Tensor:
        before = torch.zeros_like(x[:, :1]) if cache is None else cache.last.to(x.dtype)
        previous = torch.cat([before, x[:, :-1]], dim=1)
        if cache is not None:
            cache.last = x[:, -1:].detach().clone()
        return x + self.out(F.silu(self.mix(torch.cat([x, previous], dim=-1), routing)), routing)

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None):
        weight = self.mix.weight
        return ShiftCache(weight.new_zeros(batch_size, 1, weight.shape[-1] // 2, dtype=dtype or weight.dtype))


class ShiftFamily(Family):
    name = "shift"
    parts = ("mix", "out")
    blocks_per_layer = 1
    ablation_groups = ()
    scales = dict.fromkeys(SCALES, dict(d_model=64, n_layer=2, vocab_size=4096))
    recurrent = True  # its state is the last token: it samples past the training length

    def block(self, cfg: ModelConfig) -> nn.Module:
        return ShiftBlock(cfg.d_model, cfg.n_modalities if cfg.is_sparse else 1, cfg.decouple)

    @torch.no_grad()
    def init_block(self, block: nn.Module, cfg: ModelConfig) -> None:
        nn.init.normal_(block.mix.weight, std=cfg.init_std)
        nn.init.normal_(block.out.weight, std=cfg.init_std / math.sqrt(2 * cfg.n_block))

    def block_params(self, cfg: ModelConfig) -> tuple[dict[str, int], int]:
        d = cfg.d_model
        return {"mix": 4 * d * d, "out": 2 * d * d}, 0

    def block_flops(self, cfg: ModelConfig, seq_len: int) -> dict[str, int]:
        return {"matmul": 2 * 6 * cfg.d_model**2}  # mix (2D -> 2D) and out (2D -> D), a MAC = 2 FLOPs


SHIFT = ShiftFamily()
DENSE = Arm("shift", SHIFT, "Shift", "black")
SPARSE = Arm("mos", SHIFT, "MoS", "gold", dense="shift", routing="modality")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_cache):
    """The family's two arms registered, and a comparison of them trained in Chameleon (4 steps): its folders."""
    for arm in (DENSE, SPARSE):
        register_arm(arm)
    try:
        tmp = tmp_path_factory.mktemp("family")
        args = small(tmp, small_cache, "--settings", "chameleon", "--arms", "shift,mos", "--max-steps", "4")
        assert main(args) == 0
        yield {arm: trained_folder(tmp / "runs", "chameleon", arm) for arm in ("shift", "mos")} | {
            "results": tmp / "results"
        }
    finally:
        for arm in (SPARSE, DENSE):
            del ARMS[arm.name]


def test_its_arms_resolve_and_train_through_compare(trained):
    assert ModelConfig.from_scale("tiny", arch="mos").decouple == ("mix", "out")
    assert isinstance(build_model(ModelConfig.from_scale("tiny", arch="shift")).layers[0], ShiftBlock)
    summaries = [read_summary(trained[arm]) for arm in ("shift", "mos")]
    assert [(s.status, s.steps) for s in summaries] == [("finished", 4)] * 2


def test_fvcore_counts_its_formula_and_the_sparse_arm_costs_the_dense_arms_flops(trained):
    dense, sparse = (read_summary(trained[arm]) for arm in ("shift", "mos"))
    assert sparse.flops_per_token == pytest.approx(sparse.flops_per_token_analytic, rel=1e-9)
    assert sparse.flops_per_token_analytic == dense.flops_per_token_analytic
    assert sparse.params_active == dense.params_total < sparse.params_total


def test_the_report_pairs_its_arms(trained):
    assert "MoS vs Shift" in (trained["results"] / "report.md").read_text()


def test_it_samples_and_its_cached_generation_is_the_full_forward_past_the_training_length(trained, tmp_path):
    out = tmp_path / "samples"
    assert sample.main([str(trained["mos"]), "--prompt", "It is", "--out", str(out), "--max-new-tokens", "8"]) == 0
    assert list(out.iterdir())
    model = export.load_checkpoint_model(trained["mos"])
    tokens = torch.randint(0, model.cfg.vocab_size, (1, 200))  # training sequences are 128 long
    modality = torch.zeros_like(tokens)
    with torch.no_grad():
        full = model(tokens, modality).logits
        cache = model.allocate_inference_cache(1, 200)
        stepped = torch.cat([model(tokens[:, i : i + 1], modality[:, i : i + 1], cache=cache).logits
                             for i in range(200)], dim=1)  # fmt: skip
    torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-4)


def test_it_exports_in_the_suites_own_layout_and_loads_back_to_the_same_logits(trained, tmp_path):
    """The family names no Hugging Face class, so `export.py` writes the suite's own layout."""
    assert export.main([str(trained["mos"]), "--out", str(tmp_path / "export")]) == 0
    model, back = export.load_checkpoint_model(trained["mos"]), export.load_exported(tmp_path / "export")
    assert back.cfg == model.cfg
    tokens = torch.randint(0, model.cfg.vocab_size, (2, 33))
    modality = torch.zeros_like(tokens)
    with torch.no_grad():
        torch.testing.assert_close(back(tokens, modality).logits, model(tokens, modality).logits)
