"""Does pretraining help? The demo's tasks fine-tuned from its own pretrained checkpoint against the same folds
trained from random weights, at an equal fine-tuning budget and on the same labelled subjects.

Runs ``fomo_demo --init pretrained`` and ``fomo_demo --init scratch`` with one seed (so the same synthetic subjects,
test sets, folds and schedules; only the starting weights differ), each in its own folder under ``--out``, one after
the other. Per task it then compares the two ensembles on the same test cases: each headline metric (AUROC, Dice,
MAE) with its bootstrap 95% CI, and the paired bootstrap of the difference (pretrained minus scratch; cases resampled
together for both arms). ``--reuse`` takes existing demo outputs instead of running them again.
``--train-fraction F`` runs both arms on that share of each task's training subjects (``fomo_demo --train-fraction``:
the same test sets): where pretraining is expected to help most, with few labels.

Target (issue 21): pretrained ahead on every task. Writes ``pretraining.json`` under ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a clone without installing
    sys.path.insert(0, str(REPO))

from reporting import check_out_folder, write_report  # noqa: E402  (beside this script)

from nnunet_ext.errors import FomoInputError, cli_entry  # noqa: E402
from nnunet_ext.utils.arguments import fraction, int_at_least  # noqa: E402

RESULT_STEM = "pretraining"
ARMS = ("pretrained", "scratch")
#: The ensemble's rows in each report's per_case.json.
ENSEMBLE = "ensemble"
#: Per-case quantity each task's headline is built from: (metric, higher is better).
HEADLINES = {1: ("auroc", True), 2: ("dice", True), 3: ("mae", False)}
N_RESAMPLES = 2000
#: ``--quick``: task 1 only, two folds, the fewest subjects the demo takes: shows that the benchmark runs.
QUICK_ARGS = ["--tasks", "1", "--folds", "0", "1", "--cases", "10"]
DEMO = "import sys; from nnunet_ext.demo import main; sys.exit(main(sys.argv[1:]))"


def run_demo(out: Path, arm: str, demo_args: Sequence[str]) -> None:
    """``fomo_demo --init ARM`` into ``out``, its console output passed through."""
    print(f"$ fomo_demo --out {out} --init {arm} {' '.join(demo_args)}", flush=True)
    done = subprocess.run([sys.executable, "-c", DEMO, "--out", str(out), "--init", arm, *demo_args])
    if done.returncode:
        raise FomoInputError(f"fomo_demo --init {arm} failed (exit status {done.returncode}); see its logs", out)


def ensemble_cases(report: Path) -> Dict[str, dict]:
    """The ensemble's per-case rows of one task's report, by case."""
    path = report / "per_case.json"
    if not path.is_file():
        raise FomoInputError("no per_case.json: is this a finished fomo_demo output?", path)
    return {row["case"]: row for row in json.loads(path.read_text()) if row["model"] == ENSEMBLE}


def statistic(task: int) -> Callable[..., float]:
    """The headline metric of ``task`` from case-aligned arrays: (targets, predictions) or per-case Dice."""
    from nnunet_ext.metrics.classification import classification_metrics
    from nnunet_ext.metrics.regression import regression_metrics

    if task == 1:
        return lambda y, p: classification_metrics(y, p)["auroc"]
    if task == 3:
        return lambda y, p: regression_metrics(y, p)["mae"]
    return lambda dice: float(np.mean(dice))


def compare_task(task: int, reports: Dict[str, Path], seed: int, n_resamples: int = N_RESAMPLES) -> Dict[str, Any]:
    """Both arms' headline metric with CIs on the same test cases, and the paired bootstrap of their difference."""
    from nnunet_ext.metrics.bootstrap import bootstrap_cis

    rows = {arm: ensemble_cases(report) for arm, report in reports.items()}
    cases = sorted(rows[ARMS[0]])
    if sorted(rows[ARMS[1]]) != cases:
        raise FomoInputError(f"task {task}: the two runs scored different test cases; run both with one seed")
    metric, higher_is_better = HEADLINES[task]
    measure = statistic(task)
    if task == 2:
        arrays = [np.array([rows[arm][c]["dice"] for c in cases], dtype=float) for arm in ARMS]

        def values(pretrained, scratch):
            return {"pretrained": measure(pretrained), "scratch": measure(scratch),
                    "difference": measure(pretrained) - measure(scratch)}
    else:
        targets = np.array([rows[ARMS[0]][c]["target"] for c in cases], dtype=float)
        arrays = [targets, *[np.array([rows[arm][c]["prediction"] for c in cases], dtype=float) for arm in ARMS]]

        def values(y, pretrained, scratch):
            return {"pretrained": measure(y, pretrained), "scratch": measure(y, scratch),
                    "difference": measure(y, pretrained) - measure(y, scratch)}
    point = values(*arrays)
    intervals = bootstrap_cis(values, *arrays, names=("pretrained", "scratch", "difference"),
                              n_resamples=n_resamples, seed=seed)
    difference = intervals["difference"]
    ahead = point["difference"] > 0 if higher_is_better else point["difference"] < 0
    excludes_zero = difference.low > 0 if higher_is_better else difference.high < 0
    return {"task": task, "metric": metric, "higher_is_better": higher_is_better, "n_cases": len(cases),
            **{name: {"value": point[name], "ci_low": intervals[name].low, "ci_high": intervals[name].high}
               for name in ("pretrained", "scratch", "difference")},
            "pretrained_ahead": bool(ahead), "paired_ci_excludes_zero": bool(excludes_zero)}


def train_fraction_of(run: Path, task: int) -> float:
    """The share of training subjects a demo run's task trained on, from its dataset.json."""
    from nnunet_ext.dataset_conversion.tasks import FOMO_KEY
    from nnunet_ext.demo import DEMO_DATASET_IDS

    found = sorted((run / "nnUNet_raw").glob(f"Dataset{DEMO_DATASET_IDS[task]:03d}_*/dataset.json"))
    if not found:
        raise FomoInputError(f"task {task}: no converted dataset in this run", run / "nnUNet_raw")
    # a conversion made before --train-fraction existed kept every subject
    return json.loads(found[0].read_text())[FOMO_KEY].get("train_fraction", 1.0)


def format_table(report: Dict[str, Any]) -> str:
    def cell(entry: Dict[str, float]) -> str:
        return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"

    rows = [f"| {r['task']} | {r['metric']} | {r['n_cases']} | {cell(r['pretrained'])} | {cell(r['scratch'])} | "
            f"{cell(r['difference'])} | {'yes' if r['pretrained_ahead'] else 'no'}"
            f"{' (CI excludes 0)' if r['paired_ci_excludes_zero'] else ''} |" for r in report["tasks"]]
    return "\n".join([
        "Pretrained vs scratch, ensembles on each task's test set (95% bootstrap CIs; difference = pretrained - "
        f"scratch, paired), trained on {report['train_fraction']:g} of the training subjects",
        "| task | metric | cases | pretrained | scratch | difference | pretrained ahead |",
        "|---|---|---|---|---|---|---|", *rows,
        f"Target: pretrained ahead on every task: {'met' if report['target_met'] else 'NOT met'}"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for both demo runs and pretraining.json (created if missing)")
    parser.add_argument("--tasks", type=int, nargs="+", choices=sorted(HEADLINES), default=sorted(HEADLINES),
                        help="FOMO tasks to compare (default: all three)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both demo runs and of the bootstrap")
    parser.add_argument("--n-bootstrap", type=int_at_least(100), default=N_RESAMPLES,
                        help=f"bootstrap resamples (default {N_RESAMPLES})")
    parser.add_argument("--reuse", action="store_true",
                        help="compare the demo outputs already under --out/pretrained and --out/scratch")
    parser.add_argument("--train-fraction", type=fraction, default=1.0,
                        help="share of each task's training subjects both arms train on (fomo_demo "
                             "--train-fraction; same test sets; default: 1, all)")
    parser.add_argument("--quick", action="store_true", help="smoke run: task 1, two folds, 10 subjects")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_out_folder(args.out)
    tasks = [1] if args.quick else args.tasks
    demo_args = QUICK_ARGS if args.quick else ["--tasks", *map(str, tasks)]
    outputs = {arm: args.out / arm for arm in ARMS}
    if args.reuse:
        missing = [str(path) for path in outputs.values() if not (path / "REPORT.md").is_file()]
        if missing:
            raise FomoInputError(f"--reuse: no finished fomo_demo output in {', '.join(missing)}")
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        for arm, out in outputs.items():
            run_demo(out, arm, [*demo_args, "--seed", str(args.seed), "--train-fraction", f"{args.train_fraction:g}"])
    fractions = {train_fraction_of(out, task) for out in outputs.values() for task in tasks}
    if len(fractions) > 1:
        raise FomoInputError(f"the runs trained on different shares of their subjects ({sorted(fractions)}): "
                             "compare runs of one --train-fraction", args.out)
    results = [compare_task(task, {arm: out / "reports" / f"task{task}" for arm, out in outputs.items()},
                            args.seed, args.n_bootstrap) for task in tasks]
    report = {"tasks": results, "seed": args.seed, "train_fraction": fractions.pop(),
              "target_met": all(r["pretrained_ahead"] for r in results),
              "runs": {arm: str(out) for arm, out in outputs.items()}}
    write_report(args.out, RESULT_STEM, report, format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
