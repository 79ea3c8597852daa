"""The run record: what a run folder holds and how its metrics are named, defined once for the writer
(experiments/run.py), the reader (analysis/results.py) and the tests.

    <root>/<setting>/<scale>/<recipe>/<variant>/seed<k>/
        recipe = the recipe's name (experiments.run.recipe_id: "200steps-efcc3e"), so runs of other budgets, data
        or model overrides live beside each other; variant = the arm, or an ablation variant ("mom-in_proj")
        config.json             the resolved configuration: model, data, module, trainer, step budget
        metrics.csv             one row per logged step (Lightning's CSVLogger), columns named below
        tb/                     TensorBoard events (the same metrics)
        checkpoints/last.ckpt   the resume point (with its SHA-256 beside it in last.ckpt.sha256)
        summary.json            `Summary`: identity, sizes, FLOPs, backend, versions, status, final losses

metrics.csv: a row with `step = s` was logged after s + 1 optimizer steps. Training rows hold the per-step
training losses (`train/loss` is the total, `train/loss_<modality>` each modality's), `flops` (cumulative training
FLOPs), `tokens` and `tokens/<modality>`, `time/wall_s`, `optim/lr`, `optim/grad_norm` and `speed/tokens_per_s`;
validation rows hold `<valset>/loss_<modality>` for every validation set (`val`, `val_real_speech`), and the image
loss of each image source as `<valset>/loss_image/<source>`.
`loss_name` and `parse_loss_name` are the one mapping between a loss and its column.

A results folder's `comparison.json` is {"meta": `ComparisonMeta`, "runs": [{setting, arm, variant, seed, folder}]}:
experiments/compare.py writes it, analysis/results.py reads it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

from common.cli import fits
from common.files import write_json

SCHEMA_VERSION = 1
STATUSES = ("running", "finished", "failed", "crashed", "interrupted")

CONFIG, METRICS, SUMMARY, TENSORBOARD = "config.json", "metrics.csv", "summary.json", "tb"
CHECKPOINT = "checkpoints/last.ckpt"

# metrics.csv columns besides the losses
STEP, FLOPS, TOKENS, WALL = "step", "flops", "tokens", "time/wall_s"
LR, GRAD_NORM, TOKENS_PER_S = "optim/lr", "optim/grad_norm", "speed/tokens_per_s"
TRAIN_LOSS = "train/loss"  # the total training loss, the one optimised


class RunRecordError(ValueError):
    """A run folder's file cannot be read as the run record defines it; the message names the file."""


def run_dir(root: str | Path, setting: str, scale: str, recipe: str, variant: str, seed: int) -> Path:
    return Path(root) / setting / scale / recipe / variant / f"seed{seed}"


def tokens_name(modality: str) -> str:
    return f"{TOKENS}/{modality}"


class LossKey(NamedTuple):
    """Which loss a curve holds: kind 'val' or 'train', the validation set ('' for training), the modality, and the
    image source ('' for all of the modality's positions)."""

    kind: str
    valset: str
    modality: str
    source: str = ""


def loss_name(key: LossKey) -> str:
    """The metrics.csv column of a loss: 'train/loss_text', 'val/loss_image', 'val_real_speech/loss_speech',
    'val/loss_image/emoji'."""
    name = f"train/loss_{key.modality}" if key.kind == "train" else f"{key.valset}/loss_{key.modality}"
    return f"{name}/{key.source}" if key.source else name


def parse_loss_name(column: str) -> LossKey | None:
    """The inverse of `loss_name`; None for a column that is not a per-modality loss."""
    prefix, sep, rest = column.partition("/loss_")
    modality, _, source = rest.partition("/")
    if not sep or not prefix or not modality:
        return None
    return LossKey("train", "", modality, source) if prefix == "train" else LossKey("val", prefix, modality, source)


@dataclass(frozen=True)
class ComparisonMeta:
    """comparison.json's "meta": what a comparison trained and how. A key an older or hand-written file lacks takes
    the default here; keys this class does not name are kept in `other`."""

    scale: str = "?"
    seeds: tuple[int, ...] = ()
    max_steps: int | None = None
    settings: tuple[str, ...] = ()  # in the order the report shows them
    arms: tuple[str, ...] = ()
    ablation: str | None = None  # "basic", "full" or None
    ablation_setting: str | None = None
    ablation_arm: str = "mom"  # the sparse arm whose parts the ablation decouples
    recipe: dict = field(default_factory=dict)  # the resolved recipe (experiments.plan.Comparison.meta_recipe)
    command: str = "?"
    wall_clock_s: float | None = None  # the whole comparison, written when it ends
    versions: dict = field(default_factory=dict)
    other: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> ComparisonMeta:
        known = {f.name for f in fields(cls)} - {"other"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        for name in ("seeds", "settings", "arms"):
            values[name] = tuple(values.get(name) or ())
        return cls(**values, other={k: v for k, v in data.items() if k not in known})

    def as_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "other"}
        return {**{k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}, **self.other}

    @property
    def val_every(self) -> int | None:
        return self.recipe.get("val_every")


@dataclass
class Summary:
    """summary.json: written when a run starts and again when it stops (`status` says how)."""

    setting: str
    arm: str
    variant: str  # the run folder's name: the arm, or an ablation variant of it
    scale: str
    seed: int
    recipe: str = ""  # the recipe's name, the run folder's parent's parent (experiments.run.recipe_id)
    status: str = "running"  # one of STATUSES
    reason: str | None = None  # why a run is not finished
    params_total: int = 0
    params_active: int = 0  # per token: one expert of every sparse part
    flops_per_token: float = 0.0  # training FLOPs per token counted by fvcore
    flops_per_token_analytic: float = 0.0  # the same from the formula (analysis/flops.py)
    train_flops_per_step: float = 0.0  # analytic FLOPs per token x tokens per step (every device)
    tokens_per_step: int = 0
    world_size: int = 1
    backend: str = ""  # the kernel the forward ran: a selective-scan backend, or "sdpa"
    data_sources: list[str] = field(default_factory=list)
    data_notes: list[str] = field(default_factory=list)  # what assembling the data left out (MultiModalDataModule)
    versions: dict[str, str] = field(default_factory=dict)
    device: str = ""
    threads: int = 0  # torch's CPU threads in the training process
    steps: int = 0  # optimizer steps done
    wall_clock_s: float = 0.0
    final_val_loss: dict[str, float] = field(default_factory=dict)  # metrics.csv column -> last value
    # share of the image tokens from each image source, per split: {"train": {"emoji": 0.18, ...}, "val": {...}}
    image_mix: dict[str, dict[str, float]] = field(default_factory=dict)
    # what a finished run's files hold (`file_record`), checked by `damage` before the run is used
    files: dict[str, dict] = field(default_factory=dict)
    # a finished run's batches: SHA-256 chained over the (epoch, index) keys of every batch it trained, in order
    # (datamodules.samplers.order_digest; rank 0's under DDP). Runs of one seed and data see the same batches.
    batch_order: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, path: Path | str = SUMMARY) -> Summary:
        """Check a decoded summary.json against this schema; RunRecordError naming `path` if it does not fit."""
        if not isinstance(data, dict):
            raise RunRecordError(f"{path}: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        if "schema_version" not in data and "arm" in data:  # version 0 named the variant "name"; it reads as version 1
            data["variant"] = data.pop("name", data["arm"])
            data["schema_version"] = 1
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RunRecordError(
                f"{path}: run record schema version {version!r}, but this suite reads version {SCHEMA_VERSION}; "
                "train it again with this version (delete the run folder) or use the version that wrote it"
            )
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        missing = [name for name in ("setting", "arm", "variant", "scale", "seed") if name not in data]
        wrong = [name for name, value in data.items() if name in hints and not fits(value, hints[name])]
        problems = [f"unknown fields {unknown}"] if unknown else []
        problems += [f"missing fields {missing}"] if missing else []
        problems += [f"fields of the wrong type {wrong}"] if wrong else []
        if data.get("status") not in STATUSES:
            problems.append(f"status {data.get('status')!r} is not one of {list(STATUSES)}")
        if problems:
            raise RunRecordError(f"{path}: not a run summary ({'; '.join(problems)})")
        return cls(**data)


def read_summary(folder: Path) -> Summary | None:
    """The run's summary, None when the folder has none; RunRecordError naming the file when it is unreadable."""
    path = Path(folder) / SUMMARY
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunRecordError(f"{path}: unreadable ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise RunRecordError(f"{path}: not valid JSON ({exc})") from exc
    return Summary.from_dict(data, path)


def write_summary(folder: Path, summary: Summary) -> None:
    write_json(Path(folder) / SUMMARY, summary.to_dict())


def file_record(folder: Path, checkpoint_sha256: bool = True) -> dict[str, dict]:
    """What a finished run's files hold: metrics.csv's rows, last step and SHA-256, and the checkpoint's size and
    SHA-256 (left out when `checkpoint_sha256` is False: it reads the whole checkpoint)."""
    folder = Path(folder)
    data = (folder / METRICS).read_bytes()
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    steps = [int(float(row[STEP])) for row in rows if row.get(STEP)]
    checkpoint = {"bytes": (folder / CHECKPOINT).stat().st_size}
    if checkpoint_sha256:
        with open(folder / CHECKPOINT, "rb") as f:
            checkpoint["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
    return {
        METRICS: {"rows": len(rows), "last_step": max(steps, default=-1), "sha256": hashlib.sha256(data).hexdigest()},
        CHECKPOINT: checkpoint,
    }


def file_disagreements(folder: Path, summary: Summary, checkpoint_sha256: bool = False) -> list[str]:
    """How a finished run's files disagree with what its summary recorded of them ([] when they agree), each
    naming the file. The checkpoint's SHA-256 is compared only when asked (before the checkpoint is loaded: sample,
    export); its size always. Runs recorded before summaries held `files` cannot be checked and give []."""
    if not summary.finished or not summary.files:
        return []
    folder = Path(folder)
    try:
        found = file_record(folder, checkpoint_sha256)
    except FileNotFoundError as exc:
        return [f"{exc.filename}: missing"]
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        return [f"{folder / METRICS}: unreadable ({exc})"]
    problems = []
    for name, record in summary.files.items():
        for key, value in record.items():
            have = found.get(name, {}).get(key, value)  # a value not computed (the checkpoint's SHA) is not compared
            if have != value:
                problems.append(f"{folder / name}: {key} {have}, the summary recorded {value}")
    return problems


def read_config(folder: Path) -> dict | None:
    """The run's config.json as a dict, None when absent; RunRecordError naming the file when it is unreadable."""
    path = Path(folder) / CONFIG
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunRecordError(f"{path}: not readable as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RunRecordError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def write_config(folder: Path, config: dict) -> None:
    write_json(Path(folder) / CONFIG, config)
