"""Export a trained run's model so that it loads without the run folder or this suite's training code.

    python experiments/export.py runs/chameleon/tiny/200steps-efcc3e/mamba/seed0 --out exports/mamba     # dense Mamba
    python experiments/export.py runs/chameleon/tiny/200steps-efcc3e/mom/seed0 --out exports/mom         # any arm

A dense Mamba or Mamba-2 run (no patch layers) becomes a Hugging Face `MambaForCausalLM` / `Mamba2ForCausalLM`
folder (`save_pretrained`: config.json and model.safetensors; its keys are ours under `backbone.`, mamba-ssm's names).
Every other arm (MoM, MoM-2, MoT, the transformer, Transfusion models) is written in the suite's own layout:
config.json (the `ModelConfig`) and model.safetensors, loaded by `load_exported(folder)` into a `MultiModalLM`.
`--format own` writes a dense Mamba or Mamba-2 run in the own layout too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from analysis.run_record import CHECKPOINT, file_disagreements, read_summary
from common.files import atomic_write
from experiments.checkpoints import SAFE_GLOBALS, UnsafeCheckpoint, check_safe, sha_problem
from experiments.lit_module import LitMultiModalLM
from models import ModelConfig, build_model
from models.lm import MultiModalLM

OWN_FORMAT = "mixture-of-mamba-suite"

TRUST_HELP = (
    "load the checkpoint even if it is not the file the run wrote or holds pickled objects a run's checkpoint never "
    "holds: only for a file whose origin you trust, as code in it runs (without it, such a file is refused unloaded)"
)


class ExportError(ValueError):
    """A run that cannot be exported as asked; the message says why and what is possible."""


def load_checkpoint_model(run_dir: str | Path, trust: bool = False) -> MultiModalLM:
    """The model of a run folder's final checkpoint (float32, eval mode); see `load_run_module`."""
    return load_run_module(run_dir, trust).model.float().eval()


def load_run_module(run_dir: str | Path, trust: bool = False) -> LitMultiModalLM:
    """The LightningModule of a run folder's final checkpoint, after checking that the checkpoint is the file the
    run wrote (its SHA-256, and a finished run's summary) and holds nothing but what a run's checkpoint holds: it is
    loaded with weights_only=True, so nothing in it runs. `trust` skips those checks and unpickles anything (for a
    checkpoint from elsewhere whose origin the user trusts: code in it runs)."""
    folder = Path(run_dir)
    checkpoint = folder / CHECKPOINT
    if not checkpoint.is_file():
        raise ExportError(f"{run_dir}: no checkpoint at {checkpoint} (is it a run folder, and has the run trained?)")
    if not trust:
        summary = read_summary(folder)
        problems = file_disagreements(folder, summary, checkpoint_sha256=True) if summary is not None else []
        if problem := sha_problem(checkpoint):
            problems.append(problem)
        if problems:
            raise ExportError(f"{run_dir}: the checkpoint is not the one the run wrote ({'; '.join(problems)})")
        try:
            check_safe(checkpoint)
        except UnsafeCheckpoint as exc:
            raise ExportError(str(exc)) from None
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        return LitMultiModalLM.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=not trust)


def _hf_state(model: MultiModalLM) -> dict[str, torch.Tensor]:
    """Our state dict under Hugging Face's Mamba / Mamba-2 names: the blocks' keys are mamba-ssm's (ours) under
    `backbone.`, the embedding is `embeddings`."""
    state = {("lm_head.weight" if k == "lm_head.weight" else f"backbone.{k}"): v for k, v in model.state_dict().items()}
    state["backbone.embeddings.weight"] = state.pop("backbone.embedding.weight")
    return state


def _save_hf(model: MultiModalLM, hf_class: str, config: object, out: Path) -> Path:
    """Load our weights strictly into transformers' `hf_class` built from `config`, and save it to `out`."""
    import transformers

    hf = getattr(transformers, hf_class)(config)
    hf.load_state_dict(_hf_state(model), strict=True)
    hf.save_pretrained(out)
    return out


def export_hf_mamba(model: MultiModalLM, out: Path) -> Path:
    """A dense Mamba model as a Hugging Face MambaForCausalLM folder."""
    from transformers import MambaConfig

    cfg = model.cfg
    config = MambaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        state_size=cfg.d_state,
        num_hidden_layers=cfg.n_block,
        expand=cfg.expand,
        intermediate_size=cfg.expand * cfg.d_model,
        conv_kernel=cfg.d_conv,
        time_step_rank=cfg.dt_rank_value,
        use_bias=cfg.bias,
        use_conv_bias=cfg.conv_bias,
        layer_norm_epsilon=cfg.norm_eps,
        tie_word_embeddings=False,
        residual_in_fp32=True,
    )
    return _save_hf(model, "MambaForCausalLM", config, out)


def export_hf_mamba2(model: MultiModalLM, out: Path) -> Path:
    """A dense Mamba-2 model as a Hugging Face Mamba2ForCausalLM folder (its gated norm shares our epsilon)."""
    from transformers import Mamba2Config

    cfg = model.cfg
    config = Mamba2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        state_size=cfg.d_state,
        num_hidden_layers=cfg.n_block,
        expand=cfg.expand,
        head_dim=cfg.headdim,
        num_heads=cfg.d_inner // cfg.headdim,
        n_groups=cfg.ngroups,
        chunk_size=cfg.chunk_size,
        conv_kernel=cfg.d_conv,
        use_bias=cfg.bias,
        use_conv_bias=cfg.conv_bias,
        layer_norm_epsilon=cfg.norm_eps,
        time_step_min=cfg.dt_min,
        time_step_max=cfg.dt_max,
        time_step_floor=cfg.dt_init_floor,
        tie_word_embeddings=False,
        residual_in_fp32=True,
    )
    return _save_hf(model, "Mamba2ForCausalLM", config, out)


# Family.hf_class -> the function writing that class's folder
HF_EXPORTERS = {"MambaForCausalLM": export_hf_mamba, "Mamba2ForCausalLM": export_hf_mamba2}


def exports_to_hugging_face(cfg: ModelConfig) -> bool:
    """A dense model without patch layers of a family that names a Hugging Face class."""
    return cfg.family.hf_class in HF_EXPORTERS and not cfg.is_sparse and not cfg.patch_dim


def export_hf(model: MultiModalLM, out: Path) -> Path:
    """A dense model as a folder of its family's Hugging Face class (`Family.hf_class`)."""
    cfg = model.cfg
    if not exports_to_hugging_face(cfg):
        raise ExportError(f"only a dense model without patch layers of a family with a Hugging Face class exports to "
                          f"Hugging Face; this is {cfg.arch!r}{' with patch layers' if cfg.patch_dim else ''}: use "
                          f"--format own")  # fmt: skip
    try:
        import transformers  # noqa: F401  (the exporters need it)
    except ImportError as exc:
        raise ExportError(f"the Hugging Face export needs transformers ({exc}); pip install transformers") from None
    return HF_EXPORTERS[cfg.family.hf_class](model, out)


def export_own(model: MultiModalLM, out: Path) -> Path:
    """config.json (the ModelConfig) and model.safetensors, loaded by `load_exported`."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.json", json.dumps({"format": OWN_FORMAT, "model": model.cfg.to_dict()}, indent=1))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    return out


def load_exported(folder: str | Path) -> MultiModalLM:
    """A model exported in the own layout (`export_own`)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{folder}: no readable config.json ({exc})") from None
    if meta.get("format") != OWN_FORMAT:
        raise ExportError(f"{folder}: not an export of this suite (a Hugging Face folder loads with transformers)")
    cfg = meta["model"]
    model = build_model(ModelConfig(**{**cfg, "decouple": tuple(cfg["decouple"])}))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a run folder (runs/<setting>/<scale>/<recipe>/<variant>/seed<k>)")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--format", choices=("auto", "hf", "own"), default="auto",
                        help="auto: Hugging Face for a dense Mamba or Mamba-2 run, the own layout "
                        "otherwise")  # fmt: skip
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    args = parser.parse_args(argv)
    try:
        model = load_checkpoint_model(args.run, trust=args.trust_checkpoint)
        hf = args.format == "hf" or (args.format == "auto" and exports_to_hugging_face(model.cfg))
        out = (export_hf if hf else export_own)(model, Path(args.out))
    except ExportError as exc:
        parser.error(str(exc))
    print(f"export.py: wrote {out} ({'Hugging Face MambaForCausalLM' if hf else 'config.json + model.safetensors'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
