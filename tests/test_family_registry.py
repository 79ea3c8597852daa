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


@pytest.fixture
def registered():
    for arm in (DENSE, SPARSE):
        register_arm(arm)
    yield
    for arm in (SPARSE, DENSE):
        del ARMS[arm.name]


def test_a_family_defined_in_one_file_trains_counts_reports_samples_and_exports(registered, tmp_path, small_cache):
    assert ModelConfig.from_scale("tiny", arch="mos").decouple == ("mix", "out")
    args = small(tmp_path, small_cache, "--settings", "chameleon", "--arms", "shift,mos", "--max-steps", "4")
    assert main(args) == 0
    runs = tmp_path / "runs"
    folders = {arm: trained_folder(runs, "chameleon", arm) for arm in ("shift", "mos")}
    dense, sparse = (read_summary(folders[arm]) for arm in ("shift", "mos"))
    assert dense.status == sparse.status == "finished" and sparse.steps == 4
    # Counted by fvcore as the family's formula says, and the sparse arm costs exactly its dense partner.
    assert sparse.flops_per_token == pytest.approx(sparse.flops_per_token_analytic, rel=1e-9)
    assert sparse.flops_per_token_analytic == dense.flops_per_token_analytic
    assert sparse.params_active == dense.params_total < sparse.params_total
    assert "MoS vs Shift" in (tmp_path / "results" / "report.md").read_text()
    # Samples: the cached generation (the family's state) equals a full forward, past the training length too.
    out = tmp_path / "samples"
    assert sample.main([str(folders["mos"]), "--prompt", "It is", "--out", str(out), "--max-new-tokens", "8"]) == 0
    assert list(out.iterdir())
    model = export.load_checkpoint_model(folders["mos"])
    tokens = torch.randint(0, model.cfg.vocab_size, (1, 200))
    modality = torch.zeros_like(tokens)
    with torch.no_grad():
        full = model(tokens, modality).logits
        cache = model.allocate_inference_cache(1, 200)
        stepped = torch.cat([model(tokens[:, i : i + 1], modality[:, i : i + 1], cache=cache).logits
                             for i in range(200)], dim=1)  # fmt: skip
    torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-4)
    # Exported in the suite's own layout (the family names no Hugging Face class) and loaded back: the same logits.
    assert export.main([str(folders["mos"]), "--out", str(tmp_path / "export")]) == 0
    back = export.load_exported(tmp_path / "export")
    assert back.cfg == model.cfg
    with torch.no_grad():
        torch.testing.assert_close(back(tokens, modality).logits, full)
    assert isinstance(build_model(model.cfg.dense()).layers[0], ShiftBlock)
