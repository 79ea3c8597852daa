"""A results folder read into pandas: comparison.json and the run folders it names (analysis/run_record.py).

    results = load_results("results/tiny")
    results.runs      one row per run comparison.json lists, finished or not: identity, status, the summary's fields
    results.curves    every curve of every finished run, long format (CURVE_COLUMNS): validation losses at each
                      evaluation, training losses at every step
    evaluation_grid(results)   the same with training losses averaged over the `val_every` steps that end at each
                      evaluation (placed at the block's mean step), so that both kinds live on one grid; every
                      FLOPs-to-match number uses it

`step` counts optimizer steps done: a metrics.csv row with step s counts s + 1, so its cumulative FLOPs are
(s + 1) x train_flops_per_step and its wall-clock and tokens are those of the training row of the same step. Runs
that are not finished (running, failed, crashed, interrupted, missing, unreadable, or damaged: files that disagree
with what the summary recorded of them) are listed with their status and contribute no curve; one bad run never
stops the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.run_record import (
    CONFIG,
    METRICS,
    STEP,
    TOKENS,
    WALL,
    ComparisonMeta,
    LossKey,
    RunRecordError,
    file_disagreements,
    parse_loss_name,
    read_config,
    read_summary,
)

RUN_COLUMNS = ["setting", "arm", "variant", "seed", "folder", "status", "reason", "decouple", "val_every"]
CURVE_COLUMNS = ["setting", "arm", "variant", "seed", "step", "tokens", "flops", "wall_s", *LossKey._fields, "loss"]
RUN_KEY = ["setting", "variant", "seed"]  # one run of a comparison


class ReportError(ValueError):
    """A results folder the report cannot read at all (a missing or corrupt comparison.json)."""


@dataclass
class Results:
    """A results folder: comparison.json's meta, its runs and the curves of the finished ones."""

    out: Path
    meta: ComparisonMeta
    runs: pd.DataFrame
    curves: pd.DataFrame

    @property
    def settings(self) -> list[str]:
        """The settings in meta's order, then any other setting a run names."""
        listed = list(self.meta.settings)
        return listed + sorted(set(self.runs["setting"]) - set(listed))

    @property
    def finished(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "finished"]


def load_results(out: str | Path) -> Results:
    """Read `<out>/comparison.json` and every run folder it lists (absolute, relative to the current directory, or
    failing that to `out`). Raises ReportError naming comparison.json when it is missing or not the expected JSON."""
    out = Path(out)
    path = out / "comparison.json"
    try:
        comparison = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: not found (run experiments/compare.py, or pass the folder it wrote)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not readable as JSON ({exc})") from exc
    if not isinstance(comparison, dict) or not isinstance(comparison.get("runs"), list):
        raise ReportError(f"{path}: expected an object with a 'runs' list")
    meta = ComparisonMeta.from_json(comparison.get("meta") or {})
    runs, curves = [], []
    for i, entry in enumerate(comparison["runs"]):
        try:
            run, curve = load_run(entry, out, meta.val_every)
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"{path}: runs[{i}] lacks setting/arm/seed/folder or has a bad value ({exc!r})") from exc
        runs.append(run)
        curves.append(curve)
    curves = [c for c in curves if len(c)]
    return Results(
        out=out,
        meta=meta,
        runs=pd.DataFrame(runs, columns=list(dict.fromkeys(RUN_COLUMNS + [k for r in runs for k in r]))),
        curves=pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS),
    )


def load_run(entry: dict, out: Path, val_every: int | None = None) -> tuple[dict, pd.DataFrame]:
    """One run of comparison.json: its row of `Results.runs` and its curves (empty unless finished). A folder that
    is missing or unreadable gives a row with that status, not an error."""
    folder = Path(entry["folder"])
    if not folder.is_absolute() and not folder.exists() and (out / folder).exists():
        folder = out / folder
    run = {
        "setting": entry["setting"],
        "arm": entry["arm"],
        "variant": entry.get("variant") or entry["arm"],
        "seed": int(entry["seed"]),
        "folder": folder,
        "status": "missing",
        "reason": None,
    }
    empty = pd.DataFrame(columns=CURVE_COLUMNS)
    try:
        summary, config = read_summary(folder), read_config(folder) or {}
    except RunRecordError as exc:
        return run | {"status": "unreadable", "reason": str(exc)}, empty
    if summary is None:
        return run | {"reason": f"no summary.json in {folder}"}, empty
    run |= {k: v for k, v in summary.to_dict().items() if k not in run}
    run |= {"status": summary.status, "reason": summary.reason, "val_every": config.get("val_every", val_every)}
    decouple = (config.get("model") or {}).get("decouple")
    run["decouple"] = tuple(decouple) if isinstance(decouple, list) else None  # None: the arm's default parts
    if not summary.finished:
        return run, empty
    if problems := file_disagreements(folder, summary):
        return run | {"status": "damaged", "reason": "; ".join(problems)}, empty
    if not isinstance(run["val_every"], int) or run["val_every"] < 1:
        reason = f"{folder / CONFIG}: val_every must be a positive int, got {run['val_every']!r}"
        return run | {"status": "unreadable", "reason": reason}, empty
    try:
        curves = read_metrics(folder / METRICS, summary.train_flops_per_step)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        return run | {"status": "unreadable", "reason": f"{folder / METRICS}: {exc!r}"}, empty
    if not (curves["kind"] == "val").any():
        return run | {"status": "unreadable", "reason": f"{folder / METRICS}: no validation rows"}, empty
    for name in ("setting", "arm", "variant", "seed"):
        curves.insert(CURVE_COLUMNS.index(name), name, run[name])
    return run, curves[CURVE_COLUMNS]


def read_metrics(path: Path, flops_per_step: float) -> pd.DataFrame:
    """Every loss of one metrics.csv (Lightning's CSVLogger) in long format: step, tokens, flops, wall_s, kind,
    valset, modality, loss. Validation losses at each evaluation, training losses at each step; a step logged twice
    (a resumed run) keeps its last row; non-finite values are left out."""
    if not flops_per_step > 0:
        raise ValueError(f"train_flops_per_step must be positive, got {flops_per_step!r}")
    table = pd.read_csv(path).dropna(subset=[STEP])  # pandas 3 parses floats exactly (round trip)
    table[STEP] = table[STEP].astype(float).astype(np.int64)

    def last_per_step(column: str) -> pd.Series:
        if column not in table:
            return pd.Series(dtype=np.float64)
        values = table[[STEP, column]].dropna().drop_duplicates(STEP, keep="last")
        return values.set_index(STEP)[column].astype(np.float64)

    wall, tokens = last_per_step(WALL), last_per_step(TOKENS)
    parts = []
    for column in table.columns:
        key = parse_loss_name(column)
        if key is None:
            continue
        values = last_per_step(column)
        values = values[np.isfinite(values.to_numpy())].sort_index()
        steps = values.index.to_numpy(dtype=np.int64)
        parts.append(
            pd.DataFrame(
                {
                    "step": steps + 1,
                    "tokens": tokens.reindex(steps).to_numpy(),
                    "flops": (steps + 1) * flops_per_step,
                    "wall_s": wall.reindex(steps).to_numpy(),
                    **key._asdict(),
                    "loss": values.to_numpy(),
                }
            )
        )
    columns = CURVE_COLUMNS[4:]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def evaluation_grid(results: Results) -> pd.DataFrame:
    """`results.curves` with training losses put on each run's evaluation grid: at each evaluation step, the mean of
    the per-step losses of the `val_every` steps that end there (steps without a finite loss skipped), placed at the
    block's mean step (its FLOPs, tokens and wall-clock interpolated there). A mean over a block estimates the loss
    at the block's middle; placed at the block's end it would lag by half a block, by more FLOPs for the arm of more
    FLOPs per step."""
    curves = results.curves
    parts = [curves[curves["kind"] == "val"]]
    runs = results.runs.set_index(RUN_KEY)
    for run_key, run in curves.groupby(RUN_KEY, sort=False):
        val_every = int(runs.loc[run_key, "val_every"])  # a positive int for every finished run (load_run)
        flops_per_step = runs.loc[run_key, "train_flops_per_step"]
        evaluations = sorted(set(run.loc[run["kind"] == "val", "step"].tolist()))
        for modality, train in run[run["kind"] == "train"].groupby("modality", sort=False):
            points = dict(zip(train["step"].tolist(), train["loss"].tolist(), strict=True))
            blocks = [[t for t in range(s - val_every + 1, s + 1) if t in points] for s in evaluations]
            blocks = [block for block in blocks if block]
            at = np.array([np.mean(block) for block in blocks], dtype=np.float64)
            losses = [float(np.mean([points[t] for t in block])) for block in blocks]
            known = train.sort_values("step")
            frame = pd.DataFrame(
                {
                    **dict(zip(RUN_KEY, run_key, strict=True)),
                    "arm": train["arm"].iloc[0],
                    "step": at,
                    "tokens": _interpolated(known, "tokens", at),
                    "flops": at * flops_per_step,
                    "wall_s": _interpolated(known, "wall_s", at),
                    **LossKey("train", "", modality)._asdict(),
                    "loss": losses,
                }
            )
            parts.append(frame[CURVE_COLUMNS])
    return pd.concat(parts, ignore_index=True)


def _interpolated(rows: pd.DataFrame, column: str, steps: np.ndarray) -> np.ndarray:
    """`column` of per-step rows at (fractional) `steps`, linearly; NaN where the rows have no finite value."""
    rows = rows[np.isfinite(rows[column].to_numpy(dtype=np.float64))]
    if rows.empty:
        return np.full(len(steps), np.nan)
    return np.interp(steps, rows["step"].to_numpy(np.float64), rows[column].to_numpy(np.float64))


@dataclass(frozen=True)
class Curve:
    """One loss of one run on the evaluation grid, as arrays in training order."""

    steps: np.ndarray  # optimizer steps done (a training-loss block's mean step: fractional)
    flops: np.ndarray
    wall: np.ndarray
    loss: np.ndarray


def run_curves(grid: pd.DataFrame) -> dict[tuple, dict[LossKey, Curve]]:
    """{(setting, variant, seed): {LossKey: Curve}} from an evaluation grid."""
    out: dict[tuple, dict[LossKey, Curve]] = {}
    for (setting, variant, seed, *key), c in grid.groupby([*RUN_KEY, *LossKey._fields], sort=False):
        c = c.sort_values("step")
        curve = Curve(*(c[column].to_numpy(np.float64) for column in ("step", "flops", "wall_s", "loss")))
        out.setdefault((setting, variant, seed), {})[LossKey(*key)] = curve
    return out
