"""The report on synthetic run folders with known answers: FLOPs-to-match, gaps, seeds, statuses, files, CLI."""

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis import metrics
from analysis.matching import SMOOTHING_POINTS
from analysis.metrics import Metric
from analysis.report import ReportError, main
from analysis.results import CURVE_COLUMNS, Results, evaluation_grid, load_results, read_metrics
from analysis.run_record import (
    FLOPS,
    LR,
    STEP,
    TOKENS,
    TRAIN_LOSS,
    WALL,
    ComparisonMeta,
    LossKey,
    Summary,
    loss_name,
    run_dir,
    write_config,
    write_summary,
)
from models import ARMS

FLOPS_PER_STEP = 1e9
ANALYTIC_RATIO_DENSE = 0.9999  # the analytic count of the dense runs against fvcore's, a known answer for the report
STEPS, VAL_EVERY = 2000, 5  # 400 evaluations: the trailing mean's lag moves FLOPs-to-match by well under 1%
SLOPE = 0.25  # loss = 6 - SLOPE * ln(speedup * FLOPs / FLOPS_PER_STEP)
NEVER = 0.05  # a sparse curve this much above the dense one never reaches it
MODALITIES = {
    "transfusion": ("text", "image"),
    "chameleon": ("text", "image"),
    "three_modality": ("text", "image", "speech"),
}
REAL_SPEECH = ("text", "speech")  # val_real_speech holds transcripts and real speech only
SOURCES = {"chameleon": {"digits": -0.5, "emoji": 0.5}}  # per-source image losses: the image curve plus an offset


def loss_curve(flops: np.ndarray, speedup: float) -> np.ndarray:
    """Loss linear in log-FLOPs; `speedup` k reaches any loss at 1/k of the FLOPs; speedup NEVER-offsets it instead."""
    if speedup == NEVER:
        return 6.0 - SLOPE * np.log(flops / FLOPS_PER_STEP) + NEVER
    return 6.0 - SLOPE * np.log(speedup * flops / FLOPS_PER_STEP)


def write_run(
    root: Path,
    setting: str,
    arm: str,
    seed: int,
    speedups: dict[str, float] | None = None,
    variant: str | None = None,
    decouple: list[str] | None = None,
    status: str = "finished",
    wall_per_step: float = 0.1,
    steps: int = STEPS,
    batch_order: str | None = None,
) -> dict:
    """A run folder as the run record defines it (summary.json, config.json, metrics.csv); its comparison entry.
    Runs of one setting and seed trained the same batches unless `batch_order` says otherwise.

    `speedups` maps a modality (validation set 'val' and training loss) or 'real_<modality>' (val_real_speech) to
    the curve's speedup over the dense curve; missing ones are 1.
    """
    speedups = speedups or {}
    variant = variant or arm
    folder = run_dir(root / "runs", setting, "tiny", "8steps-test", variant, seed)
    folder.mkdir(parents=True)
    valsets = {"val": MODALITIES[setting]}
    if setting == "three_modality":
        valsets["val_real_speech"] = REAL_SPEECH
    rows = []
    for s in range(steps):
        flops = (s + 1) * FLOPS_PER_STEP  # a row with step s is logged after s + 1 optimizer steps
        train = {
            loss_name(LossKey("train", "", m)): float(loss_curve(np.array(flops), speedups.get(m, 1.0)))
            for m in valsets["val"]
        }
        rows.append(
            {
                "epoch": 0,
                FLOPS: flops,
                LR: 1e-3,
                STEP: s,
                WALL: (s + 1) * wall_per_step,
                TOKENS: (s + 1) * 2048.0,
                TRAIN_LOSS: float(np.mean(list(train.values()))),
                **train,
            }
        )
        if (s + 1) % VAL_EVERY == 0:
            val = {"epoch": 0, STEP: s}
            for valset, modalities in valsets.items():
                prefix = "" if valset == "val" else "real_"
                for m in modalities:
                    loss = float(loss_curve(np.array(flops), speedups.get(prefix + m, 1.0)))
                    val[loss_name(LossKey("val", valset, m))] = loss
            for source, offset in SOURCES.get(setting, {}).items():  # per image source: the image curve, offset
                image = loss_curve(np.array(flops), speedups.get("image", 1.0)) + offset
                val[loss_name(LossKey("val", "val", "image", source))] = float(image)
            rows.append(val)
    columns = sorted({k for row in rows for k in row})
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    sparse = ARMS[arm].is_sparse
    summary = Summary(
        setting=setting,
        arm=arm,
        variant=variant,
        scale="tiny",
        seed=seed,
        status=status,
        reason=None if status == "finished" else "RuntimeError: boom",
        params_total=1_500_000 if sparse else 1_100_000,
        params_active=1_100_000,
        flops_per_token=FLOPS_PER_STEP / 2048,
        flops_per_token_analytic=FLOPS_PER_STEP / 2048 * (1.0 if sparse else ANALYTIC_RATIO_DENSE),
        train_flops_per_step=FLOPS_PER_STEP,
        tokens_per_step=2048,
        backend="torch",
        data_sources=[f"synthetic {setting} corpus"],
        versions={"torch": "0.0-test", "python": "3.x"},
        device="cpu",
        wall_clock_s=steps * wall_per_step,
        steps=steps,
        image_mix={"train": {"digits": 0.8, "emoji": 0.2}, "val": {"digits": 0.4, "emoji": 0.6}},
        batch_order=batch_order or f"{setting}-seed{seed}",
    )
    write_summary(folder, summary)
    model = {"arch": arm, "decouple": (decouple or list(ARMS[arm].parts)) if sparse else []}
    config = {"setting": setting, "arm": arm, "scale": "tiny", "seed": seed, "max_steps": steps, "val_every": VAL_EVERY}
    write_config(folder, {**config, "variant": variant, "model": model})
    return {"setting": setting, "arm": arm, "variant": variant, "seed": seed, "folder": str(folder)}


def write_comparison(out: Path, runs: list[dict], settings: list[str], ablation: str | None, seeds: list[int]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "scale": "tiny",
        "seeds": seeds,
        "max_steps": STEPS,
        "settings": settings,
        "arms": sorted({r["arm"] for r in runs}),
        "ablation_setting": ablation,
        "recipe": {"seq_len": 256, "batch_size": 8, "lr": 0.002, "warmup_steps": 20, "val_every": VAL_EVERY},
        "command": "python experiments/compare.py --settings all",
        "wall_clock_s": 812.3,
        "versions": {"torch": "0.0-test"},
    }
    (out / "comparison.json").write_text(json.dumps({"meta": meta, "runs": runs}))
    return out


def write_all(root: Path) -> Path:
    """Three settings with known answers; see each line's comment for what it exercises."""
    runs = []
    for seed in (0, 1):  # chameleon: two seeds
        runs.append(write_run(root, "chameleon", "mamba", seed))
        runs.append(write_run(root, "chameleon", "transformer", seed))
        image = 2.0 if seed == 0 else 2.5  # MoM image: 50% and 40%, mean 45% with an interval
        runs.append(write_run(root, "chameleon", "mom", seed, {"text": 1.25, "image": image}, wall_per_step=0.12))
        image = 3.0 if seed == 0 else NEVER  # MoT image: "1/2 not reached"
        runs.append(write_run(root, "chameleon", "mot", seed, {"text": 1.5, "image": image}))
    runs.append(write_run(root, "chameleon", "mom_hash", 0, {"text": 1.1, "image": 1.1}))  # a control arm, one seed
    for variant, parts, speedups in (  # the ablation, seed 0 only
        ("mom-in_proj", ["in_proj"], {"text": 1.05, "image": 1.3}),
        ("mom-in_proj+out_proj", ["in_proj", "out_proj"], {"text": 1.1, "image": NEVER}),
    ):
        runs.append(write_run(root, "chameleon", "mom", 0, speedups, variant=variant, decouple=parts))
    runs.append(write_run(root, "transfusion", "mamba", 0))
    runs.append(write_run(root, "transfusion", "mom", 0, {"image": 2.87}))
    runs.append(write_run(root, "three_modality", "mamba", 0))
    speedups = {"text": NEVER, "image": 1.5, "speech": 4.0, "real_speech": 2.0}
    runs.append(write_run(root, "three_modality", "mom", 0, speedups))
    runs.append(write_run(root, "three_modality", "transformer", 0, status="crashed", steps=100))  # excluded
    runs.append(write_run(root, "three_modality", "mot", 0, {"speech": 2.0}))  # finished, but its dense crashed
    missing = {"setting": "three_modality", "arm": "mom_hash", "variant": "mom_hash", "seed": 0, "folder": "nowhere/x"}
    settings = ["transfusion", "chameleon", "three_modality"]
    return write_comparison(root / "results", [*runs, missing], settings, "chameleon", [0, 1])


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """The synthetic results folder, with the report written once through the CLI."""
    folder = write_all(tmp_path_factory.mktemp("report"))
    assert main([str(folder)]) == 0
    return folder


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def find(rows: list[dict], **where) -> dict:
    """The one row matching `where` (the whole-modality loss unless `source` is given)."""
    where = {"source": "", **where} if rows and "source" in rows[0] else where
    hits = [r for r in rows if all(r[k] == str(v) for k, v in where.items())]
    assert len(hits) == 1, (where, hits)
    return hits[0]


def section(text: str, title: str) -> str:
    """The body of one '## title' section of report.md."""
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def table(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """The first Markdown table of `text` as {(setting, loss): {column: cell}}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]
    return {(r[header[0]], r[header[1]]): r for r in rows}


def percent(cell: str) -> float:
    return float(re.match(r"([\d.]+)%", cell).group(1)) / 100


@pytest.mark.parametrize(
    ("setting", "valset", "modality", "variant", "speedup"),
    [
        ("chameleon", "val", "text", "mom", 1.25),
        ("chameleon", "val", "image", "mom", 2.0),
        ("chameleon", "val", "text", "mot", 1.5),
        ("chameleon", "val", "image", "mot", 3.0),
        ("chameleon", "val", "image", "mom_hash", 1.1),
        ("chameleon", "val", "image", "mom-in_proj", 1.3),
        ("transfusion", "val", "image", "mom", 2.87),
        ("three_modality", "val", "speech", "mom", 4.0),
        ("three_modality", "val_real_speech", "speech", "mom", 2.0),
    ],
)
def test_flops_to_match_is_one_over_the_speedup(out, setting, valset, modality, variant, speedup):
    """A sparse curve shifted by k in FLOPs matches at 1/k (1%) on validation loss and training loss (2%)."""
    rows = csv_rows(out / "flops_to_match.csv")
    common = dict(setting=setting, modality=modality, variant=variant, seed=0)
    val = find(rows, kind="val", valset=valset, **common)
    assert val["reached"] == "true"
    assert float(val["fraction"]) == pytest.approx(1 / speedup, rel=0.01)
    if valset == "val":
        train = find(rows, kind="train", valset="", **common)
        assert float(train["fraction"]) == pytest.approx(1 / speedup, rel=0.02)


def test_report_table_shows_the_numbers_and_the_papers(out):
    """The primary table is on training loss (the papers' measure), one column per sparse arm (control arm included),
    with the papers' numbers beside; the validation table confirms, per validation set, without the papers'."""
    text = (out / "report.md").read_text()
    train_table = table(section(text, "Loss gap at equal FLOPs and FLOPs-to-match on training loss"))
    row = train_table[("chameleon", "text")]
    assert percent(row["MoM vs Mamba: FLOPs-to-match"]) == pytest.approx(0.8, rel=0.02)
    assert percent(row["MoM-pos-hash vs Mamba: FLOPs-to-match"]) == pytest.approx(1 / 1.1, rel=0.02)
    gap = float(row["MoM vs Mamba: loss gap"].split()[0])  # two seeds: a mean and an interval, no verdict
    assert gap == pytest.approx(-SLOPE * math.log(1.25), abs=2e-3) and row["unit"] == "nats"
    assert "65.40% at 1.4B" in row["MoM (paper)"] and "55.8% at 7B" in row["MoT (paper)"]
    assert "34.76% at 1.4B" in train_table[("transfusion", "image")]["MoM (paper)"]
    assert "24.80%" in train_table[("three_modality", "speech")]["MoM (paper)"]
    val_table = table(section(text, "The same on validation loss"))
    cell = val_table[("three_modality", "speech (real recordings)")]["MoM vs Mamba: FLOPs-to-match"]
    assert percent(cell) == pytest.approx(0.5, rel=0.01)
    assert not any("(paper)" in column for column in val_table[("chameleon", "text")])


def test_with_three_seeds_a_verdict_is_an_interval(tmp_path):
    """Three seeds: a sparse arm shifted by about 2x is 'better' with its gap, FLOPs-to-match ~50% [lo, hi] 'fewer
    FLOPs' beside; one identical to its dense arm makes 'no significant difference' at exactly 100%; one always
    above it is 'worse' with its gap and interval, and its FLOPs-to-match counts the seeds that reached."""
    runs = []
    for seed, k in zip((0, 1, 2), (1.9, 2.0, 2.1), strict=True):
        runs.append(write_run(tmp_path, "chameleon", "mamba", seed))
        runs.append(write_run(tmp_path, "chameleon", "transformer", seed))
        runs.append(write_run(tmp_path, "chameleon", "mom", seed, {"text": k, "image": k}))
        runs.append(write_run(tmp_path, "chameleon", "mot", seed, {"text": 1.0, "image": NEVER}))
    out = write_comparison(tmp_path / "results", runs, ["chameleon"], None, [0, 1, 2])
    assert main([str(out)]) == 0
    verdict = section((out / "report.md").read_text(), "Verdict")
    better = re.search(
        r"MoM better on text \(-0\.\d+ \[-0\.\d+, -0\.\d+\] nats at equal FLOPs; FLOPs-to-match ([\d.]+)% "
        r"\[([\d.]+)%, ([\d.]+)%\] fewer FLOPs\)",
        verdict,
    )
    assert better and float(better.group(2)) < 50 < float(better.group(3)), verdict
    assert "no significant difference on text (+0.000 [+0.000, +0.000] nats at equal FLOPs; FLOPs-to-match 100.0% " in (
        verdict
    )
    assert "worse on image (+0.050 [+0.050, +0.050] nats at equal FLOPs; FLOPs-to-match 0/3 reach; ≥ 100.0%)" in verdict
    summary = csv_rows(out / "flops_to_match_summary.csv")
    verdicts = {
        (r["variant"], r["modality"]): r["verdict"] for r in summary if (r["kind"], r["source"]) == ("train", "")
    }
    assert verdicts == {
        ("mom", "text"): "better",
        ("mom", "image"): "better",
        ("mot", "text"): "no significant difference",
        ("mot", "image"): "worse",
    }


def test_not_reached_is_said_not_numbered(out):
    """A sparse run that never gets as low is 'not reached' with the budget's lower bound in the report, and an
    empty fraction in the CSV beside that bound."""
    text = (out / "report.md").read_text()
    cell = table(section(text, "The same on validation loss"))[("three_modality", "text")][
        "MoM vs Mamba: FLOPs-to-match"
    ]
    assert cell == "not reached; ≥ 100.0%"
    verdict = section(text, "Verdict")
    assert re.search(
        r"three_modality\*\*: MoM reached Mamba's best loss on image at [\d.]+% and on speech at [\d.]+% of "
        r"Mamba's FLOPs \(one seed: no verdict\), but did not reach Mamba's best loss on text \(\+0\.050 nats at "
        r"equal FLOPs\)\.",
        verdict,
    )
    rows = csv_rows(out / "flops_to_match.csv")
    row = find(rows, kind="val", valset="val", setting="three_modality", modality="text", variant="mom")
    assert (row["reached"], row["fraction"], row["wall_clock_fraction"]) == ("false", "", "")
    assert float(row["at_least"]) == pytest.approx(1.0)
    assert float(row["loss_gap"]) == pytest.approx(NEVER, abs=1e-9)


def test_two_seeds_give_mean_and_interval_or_k_of_n(out):
    """With two seeds a cell is the geometric mean [95% interval of the log]; if one seed does not reach, '1/2 reach'
    and the lower bound with that seed at its whole budget, never the mean of the seed that reached."""
    main_table = table(section((out / "report.md").read_text(), "The same on validation loss"))
    cell = main_table[("chameleon", "image")]["MoM vs Mamba: FLOPs-to-match"]
    assert percent(cell) == pytest.approx(math.sqrt(0.5 * 0.4), rel=0.01) and re.search(r"\[[\d.]+%, [\d.]+%\]", cell)
    bound = math.sqrt(1 / 3 * 1.0)  # seed 0 reached at 1/3, seed 1 never: its whole budget, 100%
    assert (
        main_table[("chameleon", "image")]["MoT vs Transformer: FLOPs-to-match"] == f"1/2 reach; ≥ {100 * bound:.1f}%"
    )
    summary = csv_rows(out / "flops_to_match_summary.csv")
    mom = find(summary, kind="val", setting="chameleon", modality="image", variant="mom")
    assert (mom["seeds"], mom["n_reached"]) == ("0 1", "2")
    assert float(mom["fraction_low"]) < float(mom["fraction_mean"]) < float(mom["fraction_high"])
    mot = find(summary, kind="val", setting="chameleon", modality="image", variant="mot")
    assert (mot["n_reached"], mot["fraction_mean"]) == ("1", "")


def test_loss_gap_and_wall_clock_to_match(out):
    """Loss gap at equal FLOPs = -slope·ln k exactly; wall-clock-to-match = fraction × the runs' time-per-step ratio."""
    rows = csv_rows(out / "flops_to_match.csv")
    row = find(rows, kind="val", setting="chameleon", modality="image", variant="mom", seed=0)
    assert float(row["loss_gap"]) == pytest.approx(-SLOPE * math.log(2.0), abs=1e-9)
    assert float(row["wall_clock_fraction"]) == pytest.approx(1.2 * float(row["fraction"]), rel=1e-4)
    assert float(row["dense_final_loss"]) - float(row["sparse_final_loss"]) == pytest.approx(SLOPE * math.log(2.0))


def test_unfinished_runs_are_listed_and_excluded(out):
    """A crashed and a missing run appear in the runs table with their status; no number uses them."""
    text = (out / "report.md").read_text()
    runs = section(text, "Runs")
    assert re.search(r"\| three_modality \| transformer \| 0 \| \*\*crashed\*\* .*RuntimeError: boom", runs)
    assert re.search(r"\| three_modality \| mom_hash \| 0 \| \*\*missing\*\* .*no summary.json", runs)
    assert "2 of 18 runs are not finished" in text
    rows = csv_rows(out / "flops_to_match.csv")
    assert not [r for r in rows if r["setting"] == "three_modality" and r["arm"] in ("mot", "mom_hash")]


def test_a_pair_that_trained_other_batches_is_named_and_left_out(tmp_path):
    """A sparse run whose batch-order digest differs from its dense partner's (another data order) is named in the
    report and gives no number; the pair of the other seed, which trained the same batches, still does."""
    runs = []
    for seed in (0, 1):
        runs.append(write_run(tmp_path, "chameleon", "mamba", seed))
        order = "another order" if seed == 1 else None
        runs.append(write_run(tmp_path, "chameleon", "mom", seed, {"text": 2.0, "image": 2.0}, batch_order=order))
    out = write_comparison(tmp_path / "results", runs, ["chameleon"], None, [0, 1])
    assert main([str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "**1 pair of runs did not train the same batches**" in text and "chameleon mom seed 1 vs mamba." in text
    assert {r["seed"] for r in csv_rows(out / "flops_to_match.csv")} == {"0"}


def test_ablation_lists_every_variant_and_stays_out_of_the_main_table(out):
    """Every MoM variant of the ablation setting is a row labelled by its decoupled parts; none is a main column."""
    text = (out / "report.md").read_text()
    ablation = table(section(text, "Ablation"))
    labels = [key[0] for key in ablation]
    assert labels == [
        "in_proj (`mom-in_proj`)",
        "in_proj+out_proj (`mom-in_proj+out_proj`)",
        "all four (`mom`)",
        "none: dense Mamba (`mamba`)",
    ]
    row = next(r for k, r in ablation.items() if k[0].startswith("in_proj+out_proj"))
    assert row["FLOPs-to-match image"] == "not reached; ≥ 100.0%"
    assert percent(row["FLOPs-to-match text"]) == pytest.approx(1 / 1.1, rel=0.01)
    assert "mom-in_proj" not in section(text, "The same on validation loss")
    assert "![" in section(text, "Ablation")


def test_every_file_exists_and_plots_are_images(out):
    """report.md, both CSVs and every PNG exist; the PNGs open as images of a readable size; report links resolve."""
    for name in ("report.md", "flops_to_match.csv", "flops_to_match_summary.csv"):
        assert (out / name).stat().st_size > 0
    expected = [f"{s}_{k}.png" for s in MODALITIES for k in ("val_vs_flops", "val_vs_steps", "train_vs_flops")]
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == sorted([*expected, "ablation_chameleon.png"])
    for path in (out / "plots").glob("*.png"):
        assert path.stat().st_size > 20_000
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 400
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", (out / "report.md").read_text())
    assert len(links) == len(expected) + 1 and all((out / link).exists() for link in links)
    assert not list(out.rglob(".*.tmp"))


def test_a_re_render_removes_figures_it_no_longer_draws(out, tmp_path):
    """A figure of an earlier render (a setting since dropped) would sit in plots/ looking current."""
    folder = tmp_path / "results"
    shutil.copytree(out, folder)
    stale = folder / "plots" / "speech_only_val_vs_flops.png"
    stale.write_bytes((folder / "plots" / "ablation_chameleon.png").read_bytes())
    assert main([str(folder)]) == 0
    assert not stale.exists()
    assert sorted(p.name for p in (folder / "plots").glob("*.png")) == sorted(
        p.name for p in (out / "plots").glob("*.png")
    )


def test_own_data_reports_drop_the_papers_columns_and_few_evaluations_are_flagged(out, tmp_path):
    """Beside own-data results the papers' 1.4B numbers would read as a comparison; a match from 3 evaluations
    would read as exact."""
    assert "(paper)" in (out / "report.md").read_text() and "Warning: each curve" not in (out / "report.md").read_text()
    folder = tmp_path / "results"
    shutil.copytree(out, folder)
    comparison = json.loads((folder / "comparison.json").read_text())
    for run in comparison["runs"]:
        path = Path(run["folder"]) / "summary.json"
        if path.exists():
            summary = json.loads(path.read_text())
            summary["data_sources"] = ["own data: my-corpus"]
            summary["data_notes"] = ["train: text_ratio=1.0 used 1,678 of the 10,441 text-only tokens"]
            run["folder"] = str(tmp_path / "runs" / path.parent.name / run["variant"] / run["setting"])
            Path(run["folder"]).mkdir(parents=True)
            for name in ("metrics.csv", "config.json"):
                shutil.copy(path.parent / name, Path(run["folder"]) / name)
            (Path(run["folder"]) / "summary.json").write_text(json.dumps(summary))
    comparison["meta"]["max_steps"] = 3 * VAL_EVERY
    (folder / "comparison.json").write_text(json.dumps(comparison))
    assert main([str(folder)]) == 0
    text = (folder / "report.md").read_text()
    assert "(paper)" not in text and "Papers' sources" not in text and "Trained on own data" in text
    assert "Warning: each curve has 3 evaluations" in text
    assert "left out of the data: train: text_ratio=1.0 used 1,678 of the 10,441 text-only tokens" in text


def test_report_states_units_rules_and_setup(out):
    """Transfusion's image loss is labelled MSE; the smoothing rule, FLOPs convention and setup are stated."""
    text = (out / "report.md").read_text()
    headline = table(section(text, "The same on validation loss"))
    assert headline[("transfusion", "image")]["unit"] == "diffusion MSE"
    assert headline[("chameleon", "image")]["unit"] == "nats"
    how = section(text, "How to read this report")
    assert int(re.search(r"(\d+) evaluations around it", how)[1]) == SMOOTHING_POINTS
    assert "FLOPs = 2 × multiply-accumulates" in how
    low, high = re.search(r"analytic / fvcore is ([\d.]+)-([\d.]+)", how).groups()
    assert (float(low), float(high)) == (ANALYTIC_RATIO_DENSE, 1.0)  # the dense runs', the sparse runs'
    setup = section(text, "Setup")
    assert "synthetic chameleon corpus" in setup and "torch 0.0-test" in setup
    comparison = json.loads((out / "comparison.json").read_text())
    recorded = [Path(r["folder"]) / "summary.json" for r in comparison["runs"]]
    summed = sum(json.loads(path.read_text())["wall_clock_s"] for path in recorded if path.exists())  # one is missing
    wall = re.search(r"Wall-clock: (\d+) s for the comparison, (\d+) s summed over runs", setup)
    assert (int(wall[1]), int(wall[2])) == (round(comparison["meta"]["wall_clock_s"]), round(summed))


def test_read_metrics_step_semantics(tmp_path):
    """On a real metrics.csv sample: a row with step s counts s + 1 steps of FLOPs and takes its training row's
    wall-clock and tokens; on the evaluation grid the training loss is the mean of the val_every steps that end at
    the evaluation step, placed at their mean step (wall-clock interpolated there)."""
    (tmp_path / "metrics.csv").write_text(
        "epoch,flops,optim/grad_norm,optim/lr,speed/tokens_per_s,step,time/wall_s,tokens,tokens/image,tokens/text,"
        "train/loss,train/loss_image,train/loss_text,val/loss_image,val/loss_text\n"
        "0,92295659520.0,1.265,0.0009,408.67,8,23.34,18432.0,6942.0,11490.0,7.452,7.033,7.674,,\n"
        "0,102550732800.0,1.264,0.001,2087.12,9,24.32,20480.0,7752.0,12728.0,7.409,7.142,7.608,,\n"
        "0,,,,,9,,,,,,,,7.250875949859619,7.515676975250244\n"
        "0,112805806080.0,1.323,0.0011,460.58,10,28.77,22528.0,8581.0,13947.0,7.307,7.015,7.534,,\n"
    )
    curves = read_metrics(tmp_path / "metrics.csv", 10255073280.0)
    val = curves[(curves["kind"] == "val") & (curves["modality"] == "image")]
    assert val[["step", "tokens", "flops", "wall_s", "loss"]].values.tolist() == [
        [10, 20480.0, 102550732800.0, 24.32, 7.250875949859619]
    ]
    assert set(zip(curves["kind"], curves["valset"], curves["modality"], strict=True)) == {
        (k, v, m) for k, v in (("val", "val"), ("train", "")) for m in ("text", "image")
    }
    assert curves.loc[curves["kind"] == "train", "step"].tolist() == [9, 10, 11] * 2
    identity = {"setting": "chameleon", "arm": "mom", "variant": "mom", "seed": 0}
    run = identity | {"status": "finished", "val_every": 10, "train_flops_per_step": 10255073280.0}
    results = Results(tmp_path, ComparisonMeta(), pd.DataFrame([run]), curves.assign(**identity)[CURVE_COLUMNS])
    grid = evaluation_grid(results)
    text = grid[(grid["kind"] == "train") & (grid["modality"] == "text")]
    assert text[["step", "wall_s"]].values.tolist() == [[9.5, pytest.approx((23.34 + 24.32) / 2)]]
    assert text["flops"].tolist() == [pytest.approx(9.5 * 10255073280.0)]
    assert text["loss"].tolist() == [pytest.approx((7.674 + 7.608) / 2)]


def test_missing_or_corrupt_comparison_fails_naming_the_path(tmp_path, capsys):
    """The CLI exits 2 with a message naming comparison.json when it is missing or not JSON."""
    assert main([str(tmp_path)]) == 2
    assert str(tmp_path / "comparison.json") in capsys.readouterr().err
    (tmp_path / "comparison.json").write_text("{not json")
    assert main([str(tmp_path)]) == 2
    assert f"{tmp_path / 'comparison.json'}: not readable as JSON" in capsys.readouterr().err
    with pytest.raises(ReportError, match="runs\\[0\\]"):
        (tmp_path / "comparison.json").write_text(json.dumps({"runs": [{"arm": "mom"}]}))
        load_results(tmp_path)


def test_a_run_record_that_does_not_fit_is_reported_by_name(tmp_path):
    """A summary of an unknown schema version, a summary that is not JSON and a config without a usable val_every
    each make their run 'unreadable' with the file named; the report is still written from the rest."""
    runs = [write_run(tmp_path, "chameleon", arm, 0, steps=50) for arm in ("mamba", "mom", "mot", "transformer")]
    folders = {r["arm"]: Path(r["folder"]) for r in runs}
    summary = json.loads((folders["mom"] / "summary.json").read_text())
    (folders["mom"] / "summary.json").write_text(json.dumps({**summary, "schema_version": 99}))
    (folders["mot"] / "summary.json").write_text('{"arm": "mot", "status": "fini')
    config = json.loads((folders["transformer"] / "config.json").read_text())
    (folders["transformer"] / "config.json").write_text(json.dumps({**config, "val_every": "often"}))
    out = write_comparison(tmp_path / "results", runs, ["chameleon"], None, [0])
    assert main([str(out)]) == 0
    reasons = load_results(out).runs.set_index("arm")
    assert reasons.loc["mamba", "status"] == "finished"
    assert "schema version 99" in reasons.loc["mom", "reason"] and "mom" in reasons.loc["mom", "reason"]
    assert "not valid JSON" in reasons.loc["mot", "reason"] and str(folders["mot"]) in reasons.loc["mot", "reason"]
    assert "val_every must be a positive int" in reasons.loc["transformer", "reason"]
    assert set(reasons["status"]) == {"finished", "unreadable"}
    assert "3 of 4 runs are not finished" in (out / "report.md").read_text()


def test_image_loss_per_source_and_the_mix_are_reported(out):
    """Each image source gets its own rows (final loss, FLOPs-to-match on its curve) and the report states the mix."""
    text = (out / "report.md").read_text()
    rows = csv_rows(out / "flops_to_match.csv")
    digits, emoji = (
        float(find(rows, kind="val", source=s, setting="chameleon", modality="image", variant="mom", seed=0)[
            "dense_final_loss"])
        for s in ("digits", "emoji")
    )  # fmt: skip
    assert emoji - digits == pytest.approx(1.0, abs=1e-6)
    assert ("chameleon", "image (emoji)") in table(section(text, "The same on validation loss"))
    row = find(rows, kind="val", valset="val", source="emoji", setting="chameleon", modality="image", variant="mom",
               seed=0)  # fmt: skip
    assert float(row["fraction"]) == pytest.approx(0.5, rel=0.01)  # the shift of the image curve, per source too
    assert "Image tokens by source, chameleon: train digits 80%, emoji 20%; val digits 40%, emoji 60%" in text


def test_the_headline_command_prints_the_folders_numbers(out, capsys):
    """`--headline` (the README's table) prints, for every cell, the loss gap and FLOPs-to-match of
    flops_to_match_summary.csv: rendered from the folder, it cannot drift from it."""
    assert main([str(out), "--headline"]) == 0
    printed = table(capsys.readouterr().out)
    summary = [
        r for r in csv_rows(out / "flops_to_match_summary.csv") if r["kind"] == "train" and r["arm"] == r["variant"]
    ]
    assert summary
    labels = {"mom": "MoM vs Mamba", "mot": "MoT vs Transformer", "mom_hash": "MoM-pos-hash vs Mamba"}
    for r in summary:
        row = printed[(r["setting"], r["modality"])]
        gap = row[f"{labels[r['variant']]}: loss gap"]
        assert float(gap.split()[0]) == pytest.approx(float(r["loss_gap_mean"]), abs=5e-4)
        fraction = row[f"{labels[r['variant']]}: FLOPs-to-match"]
        if r["fraction_mean"]:
            assert percent(fraction) == pytest.approx(float(r["fraction_mean"]), abs=5e-4)
        else:
            assert f"≥ {100 * float(r['fraction_at_least']):.1f}%" in fraction


def test_a_metric_registered_in_one_entry_reaches_both_csvs_and_a_report_section(tmp_path, monkeypatch):
    """One `Metric` entry, and nothing else, gives a flops_to_match.csv column computed per pair, its mean over seeds in
    the summary, and a report section with its text and its values per sparse arm."""
    ratio = Metric(
        "final_loss_ratio",
        lambda p: p.match.sparse_final / p.match.dense_final,
        "{:.4f}".format,
        heading="Final-loss ratio",
        how_to_read="The sparse arm's smoothed final loss divided by its dense arm's.",
    )
    monkeypatch.setitem(metrics.METRICS, ratio.name, ratio)
    folder = write_all(tmp_path)
    assert main([str(folder)]) == 0
    pairs = csv_rows(folder / "flops_to_match.csv")
    for row in pairs:
        assert float(row["final_loss_ratio"]) == pytest.approx(
            float(row["sparse_final_loss"]) / float(row["dense_final_loss"]), rel=1e-12
        )
    chosen = dict(kind="val", valset="val", setting="chameleon", modality="image", variant="mom")
    per_seed = [float(find(pairs, **chosen, seed=seed)["final_loss_ratio"]) for seed in (0, 1)]
    summary = find(csv_rows(folder / "flops_to_match_summary.csv"), **chosen)
    assert float(summary["final_loss_ratio_mean"]) == pytest.approx(np.mean(per_seed), rel=1e-12)
    body = section((folder / "report.md").read_text(), "Final-loss ratio")
    assert "The sparse arm's smoothed final loss divided by its dense arm's." in body
    cell = table(body)[("chameleon", "image")]["MoM vs Mamba"]
    assert cell.startswith(f"{np.mean(per_seed):.4f} [")
