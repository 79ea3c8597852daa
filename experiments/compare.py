"""The suite's entry point: train every arm in every setting on identical data, then write the FLOPs-to-match report.

    python experiments/compare.py --settings all                    # the default CPU recipe, all three settings
    python experiments/compare.py --settings chameleon --arms mamba,mom,mom_hash --seeds 3
    python experiments/compare.py --settings chameleon --arms mamba,mom --ablation        # which projections matter
    python experiments/compare.py --settings all --budgets 0.4,0.6   # and the budget-matched FLOPs-to-match
    python experiments/compare.py --scale 760m --accelerator gpu --devices 8 --strategy ddp
    python experiments/compare.py --scales nano,tiny,mini --settings chameleon --seeds 3 --budgets 0.4,0.6  # vs scale

It plans the matrix (setting x seed x arm, plus ablation variants), checks every name and every existing run folder
before anything trains, skips finished runs, resumes unfinished ones and trains the rest: on the CPU one
single-threaded run per core at a time, on GPUs one run after the other (`--parallel K`: K at a time, one GPU each),
then writes the report (analysis/report.py) into `--out`; with `--scales`, one comparison per scale into
`<out>/<scale>/`, then the savings-versus-scale report (analysis/scaling.py) into `<out>`. Interrupt it and
run the same command again: it continues where it stopped. Every arm of one comparison gets the same data, seed,
token budget and optimiser: the recipe of its scale (experiments/recipes.py), which `--max-steps` / `--tokens` may
override. Its flags and their checks live in experiments/compare_cli.py, the run matrix in experiments/plan.py; what
every number of the report means is in docs/design.md.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext
from dataclasses import replace

from lightning.pytorch.utilities import rank_zero_only

from analysis.budgets import budget_folder
from analysis.report import write_report
from analysis.run_record import ComparisonMeta
from analysis.scaling import write_scaling_report
from common.files import write_json
from datamodules.errors import DATA_ERRORS
from experiments.compare_cli import build_parser, plan_comparisons, sweep_folder
from experiments.estimate import estimate_seconds, plan_lines
from experiments.plan import Comparison, RunSpec
from experiments.run import versions
from experiments.sample import ReportSample, draw_report_sample, write_comparison_samples
from experiments.store import DiskFull, disk_full, is_locked, run_lock
from experiments.workers import silence_lightning, train


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__)
    args = parser.parse_args(argv)
    try:
        comparisons = plan_comparisons(args)
    except ValueError as exc:
        parser.error(str(exc))
    if problems := [p for c in comparisons for p in c.problems()]:  # all that could refuse, before the first step
        print("compare.py: existing results were made with a different configuration:", file=sys.stderr)
        print("\n".join(f"  {p}" for p in problems), file=sys.stderr)
        print("Use another --root / --out, or delete those folders.", file=sys.stderr)
        return 2
    sweep = sweep_folder(comparisons)
    if args.dry_run or sweep:
        print("\n".join(f"compare.py: {line}" for line in plan_lines(comparisons)))
    if args.dry_run:
        return 0
    started = time.perf_counter()
    silence_lightning()  # setup's notes on what the data leave out: the runs record them, and the end prints them once
    try:  # own data that cannot serve the runs fail here, before anything is written
        for c in comparisons:
            c.prepare_data()
    except DATA_ERRORS as exc:
        parser.error(str(exc))
    if sweep and comparisons[0].threads is not None:  # on the CPU
        eta = estimate_seconds(comparisons)
        print(f"compare.py: about {eta / 60:.0f} min to train on this machine (each arm's step timed at each scale)")

    command = "python experiments/compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    # Under DDP every process runs this whole command (Lightning's launcher, torchrun or SLURM); one writes results.
    main_process = rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"
    # The results folder's lock, held for the whole command: a second compare.py on the same folder waits, then finds
    # the runs the first one finished.
    out = sweep or comparisons[0].out
    waiting = f"compare.py: another process is writing {out}; waiting for it to end"
    lock = run_lock(out, wait=True, waiting=lambda: print(waiting, flush=True)) if main_process else nullcontext()
    try:
        with lock:
            codes = []
            for i, c in enumerate(comparisons):  # each comparison's wall clock from its own start
                begun = started if i == 0 else time.perf_counter()
                meta, refs = comparison_meta(c, args, command), run_refs(c)
                codes.append(run_comparison(c, meta, refs, main_process, begun, not args.no_samples))
                if codes[-1] == 130:  # interrupted: the same command continues where it stopped
                    return 130
            if sweep and main_process:
                write_json(sweep / "sweep.json", {"command": command, "wall_clock_s": time.perf_counter() - started,
                                                  "scales": [c.scale for c in comparisons]})  # fmt: skip
                print(f"compare.py: savings versus scale written to {write_scaling_report(sweep)}")
            return max(codes)
    except OSError as exc:
        full = disk_full(exc, out, 16 * 2**20) if not isinstance(exc, DiskFull) else exc
        if full is None:
            raise
        print(f"compare.py: {full.strerror}", file=sys.stderr)
        return 1


def comparison_meta(c: Comparison, args, command: str) -> ComparisonMeta:
    """What comparison.json records of `c`: its plan and recipe (analysis.run_record.ComparisonMeta)."""
    main_runs = [s for s in c.runs if s.decouple is None and s.steps is None]
    return ComparisonMeta(
        scale=c.scale,
        seeds=tuple(dict.fromkeys(s.seed for s in c.runs)),
        max_steps=c.recipe.max_steps,
        settings=tuple(dict.fromkeys(s.setting for s in main_runs)),
        arms=tuple(dict.fromkeys(s.arm for s in main_runs)),
        ablation=args.ablation,
        ablation_setting=args.ablation_setting if args.ablation else None,
        ablation_arm=args.ablation_arm,
        recipe=c.meta_recipe(),
        command=command,
        versions=versions(),
        other={"parallel": c.parallel, "threads_per_run": c.threads, "root": str(c.root)},
    )


def run_refs(c: Comparison) -> dict[int | None, list[dict]]:
    """The runs comparison.json lists, per budget (None: the recipe's). Each budget's runs are a results folder of
    their own: the report reads the shorter ones beside its own (analysis/budgets.py)."""
    return {
        steps: [
            {"setting": s.setting, "arm": s.arm, "variant": s.variant, "seed": s.seed, "folder": str(c.folder(s))}
            for s in c.runs
            if s.steps == steps
        ]
        for steps in [None, *c.budgets]
    }


def run_comparison(c: Comparison, meta: ComparisonMeta, refs: dict[int | None, list[dict]], main_process: bool,
                   started: float, samples: bool = True) -> int:  # fmt: skip
    """Train what is not finished, sample from the first seed's runs (`samples`) and write the report (its wall
    clock counted from `started`); the exit code. `refs`: the runs of each budget (None: the recipe's)."""
    if main_process:
        c.out.mkdir(parents=True, exist_ok=True)
        write_json(c.out / "comparison.json", {"meta": meta.as_json(), "runs": refs[None]})
        for steps in c.budgets:
            budget_folder(c.out, steps).mkdir(parents=True, exist_ok=True)
            at_budget = replace(meta, max_steps=steps, recipe=c.meta_recipe(steps), ablation=None)
            write_json(budget_folder(c.out, steps) / "comparison.json", {"meta": at_budget.as_json(),
                                                                          "runs": refs[steps]})  # fmt: skip

    todo = [s for s in c.runs if c.status(s) != "finished"]
    budgets = f"; the sparse arms also at {', '.join(map(str, c.budgets))} steps" if c.budgets else ""
    print(
        f"compare.py: {len(c.runs)} runs planned, {len(c.runs) - len(todo)} finished already, {len(todo)} to "
        f"train ({c.recipe.max_steps} steps of {c.data['batch_size']}x{c.data['seq_len']} tokens each{budgets}) -> "
        f"{c.out}"
    )
    for folder, problems in c.damaged().items():
        print(f"compare.py: {folder} is damaged ({'; '.join(problems)}); it will be trained again", file=sys.stderr)
    if others := c.other_recipes():
        listed = ", ".join(f"{name} ({n} finished)" for name, n in others.items())
        print(f"compare.py: {c.root} also holds runs of other recipes, not part of this comparison: {listed}")
    elsewhere = [s for s in todo if is_locked(c.folder(s))]
    if elsewhere:
        print(f"compare.py: another process is training {', '.join(s.label for s in elsewhere)}; this one trains the "
              "rest, then waits for those (and trains any the other left unfinished)")  # fmt: skip
    # The report's samples come from each arm's first-seed run; a worker draws them once the run is finished, beside
    # the training of the others.
    to_draw = [s for s in c.runs if s.decouple is None and s.steps is None and s.seed == c.runs[0].seed] if (
        samples and main_process) else []  # fmt: skip
    drawn: dict[RunSpec, ReportSample] = {}
    try:
        train(c, [s for s in todo if s not in elsewhere], to_draw, drawn)
        for spec in elsewhere:
            with run_lock(c.folder(spec), wait=True):
                pass
        train(c, [s for s in elsewhere if c.status(s) != "finished"], to_draw, drawn)
    except KeyboardInterrupt:
        print("\ncompare.py: interrupted. Run the same command again to continue where it stopped.", file=sys.stderr)
        return 130
    for setting, notes in c.data_notes().items():
        print("\n".join(f"compare.py: {setting}: left out of the data: {note}" for note in notes))
    statuses = {s.label: c.status(s) for s in c.runs}
    unfinished = {label: status for label, status in statuses.items() if status != "finished"}
    if main_process:
        meta = replace(meta, wall_clock_s=time.perf_counter() - started)
        write_json(c.out / "comparison.json", {"meta": meta.as_json(), "runs": refs[None]})
        if samples:
            silence_lightning()  # each run's data notes were printed above, once per setting
            done = [s for s in to_draw if statuses[s.label] == "finished"]
            for spec in done:  # those no worker drew: trained here, or by another process
                if spec not in drawn:
                    drawn[spec] = draw_report_sample(c.folder(spec), spec.seed)
            write_comparison_samples(c.out, {(s.setting, s.arm): drawn[s] for s in done}, c.runs[0].seed)
        report = write_report(c.out)
        print(f"compare.py: report written to {report}" + (f"; not finished: {unfinished}" if unfinished else ""))
    return 1 if unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
