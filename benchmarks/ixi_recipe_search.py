"""Recipe search for ``FomoRegressionTrainer`` on the real IXI brain-age data: what each choice gives.

Converts and plans the IXI data exactly as ``benchmarks/ixi_brain_age.py`` does, then trains every configuration
below on the same folds (default 0 and 1: 44 validation cases), with the same seed, schedule and data, from
scratch, and reports each configuration's pooled out-of-fold MAE (bootstrap 95% CI), RMSE and Pearson r next to
predicting the training mean, with the minutes it took. Each configuration changes one thing of the reference
(soft-label loss, left-right mirroring, bottleneck head, learning rate 1e-3), so the rows read as ablations:

| name | what changes |
|---|---|
| ``reference`` | soft-label bins + KL loss, mirroring left-right only, head on the bottleneck with standardised |
|  | pooled features, lr 1e-3 |
| ``raw_head_features`` | the pooled features reach the linear layer unscaled (the previous head) |
| ``l1_standardised`` | one output, L1 on the standardised age (the previous default) |
| ``mirror_all_axes`` | nnU-Net's mirroring along every axis |
| ``head_multilevel`` | head pooling encoder levels 2, 3 and 4, dropout 0.2 |
| ``head_all_levels`` | head pooling every encoder level (0-4), no dropout |
| ``lr_3e-3`` / ``lr_3e-4`` | peak learning rate |
| ``all_levels_lr_3e-3`` | both of ``head_all_levels`` and ``lr_3e-3`` |

The default protocol (2 folds x 5 epochs x 40 steps per configuration, at 4 mm so that 200 steps per fold fit:
a step costs about a quarter of one at 2 mm; about 20-25 minutes on 2 cores for all five) is small: differences
below about 1-2 years of MAE are within the noise of 44 cases. Writes
``ixi_recipe_search.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ixi_brain_age as bench  # noqa: E402  (the benchmark beside this script)

from nnunet_ext.errors import FomoInputError, cli_entry  # noqa: E402

RESULT_STEM = "ixi_recipe_search"
DEFAULT_FOLDS = (0, 1)
DEFAULT_SPACING_MM = 4.0
DEFAULT_EPOCHS = 5
DEFAULT_ITERATIONS = 40
DEFAULT_BOOTSTRAP = 1000


@dataclass(frozen=True)
class Recipe:
    """One configuration of the regression trainer (class attributes of ``FomoRegressionTrainer``)."""

    name: str
    soft_label: bool = True
    mirror_left_right_only: bool = True
    head_pool_levels: Tuple[int, ...] = (4,)
    head_dropout: float = 0.0
    learning_rate: float = 1e-3
    standardised_head_features: bool = True
    rotate: bool = False

    def trainer_class(self) -> type:
        """An ad-hoc trainer class (trained in this process only, never looked up by name) for this recipe."""
        from nnunet_ext.trainers.regression import FomoRegressionTrainer
        from nnunet_ext.trainers.variants import FromScratch
        class_name = "FomoRegressionSearch_" + "".join(c if c.isalnum() else "_" for c in self.name)
        attributes = {"soft_label": self.soft_label, "mirror_left_right_only": self.mirror_left_right_only,
                      "head_pool_levels": self.head_pool_levels, "head_dropout": self.head_dropout,
                      "scratch_learning_rate": self.learning_rate,
                      "standardised_head_features": self.standardised_head_features, "rotate": self.rotate,
                      "__module__": __name__}
        return type(class_name, (FromScratch, FomoRegressionTrainer), attributes)


RECIPES: Tuple[Recipe, ...] = (
    Recipe("reference"),
    Recipe("raw_head_features", standardised_head_features=False),
    Recipe("l1_standardised", soft_label=False),
    Recipe("mirror_all_axes", mirror_left_right_only=False),
    Recipe("rotate", rotate=True),
    Recipe("head_multilevel", head_pool_levels=(2, 3, 4), head_dropout=0.2),
    Recipe("head_all_levels", head_pool_levels=(0, 1, 2, 3, 4)),
    Recipe("lr_3e-3", learning_rate=3e-3),
    Recipe("all_levels_lr_3e-3", head_pool_levels=(0, 1, 2, 3, 4), learning_rate=3e-3),
    Recipe("lr_3e-4", learning_rate=3e-4),
)


def run_search(settings: bench.BenchmarkSettings, recipes: Sequence[Recipe]) -> Dict[str, Any]:
    """Train every recipe on ``settings.folds``; print and save the comparison."""
    started = time.monotonic()
    bench.check_inputs(settings)
    bench.prepare_output(settings.out)
    bench.configure_environment(settings.out)
    from nnunet_ext.evaluation.report import json_safe
    from nnunet_ext.evaluation.model_selection import read_out_of_fold
    from nnunet_ext.utils.files import atomic_write_json

    dataset_name = bench.convert_and_plan(settings)
    splits, targets = bench.read_splits(dataset_name), bench.read_targets(dataset_name)
    baselines = bench.baseline_predictions(dataset_name, splits, targets, settings.folds)
    rows: Dict[str, Dict[str, Any]] = {}
    for model, oof in baselines.items():
        rows[model] = {"minutes": 0.0, **bench.summarise(oof, settings.n_bootstrap, settings.seed)}
    for recipe in recipes:
        minutes = 0.0
        model_folder = None
        for fold in settings.folds:
            print(f"\n=== {recipe.name}, fold {fold}", flush=True)
            folder, fold_minutes = bench.train_fold(recipe.trainer_class(), fold, settings.schedule, settings.device)
            minutes += fold_minutes
            model_folder = folder.parent
        oof = read_out_of_fold(model_folder, [str(f) for f in settings.folds])
        rows[recipe.name] = {"recipe": asdict(recipe), "minutes": minutes,
                             **bench.summarise(oof, settings.n_bootstrap, settings.seed)}
        print(format_comparison(rows), flush=True)  # partial results survive an interrupted search
        atomic_write_json(settings.out / f"{RESULT_STEM}.json", json_safe(_report(settings, rows, started)))
    report = _report(settings, rows, started)
    atomic_write_json(settings.out / f"{RESULT_STEM}.json", json_safe(report))
    print(f"\nRecipe search, folds {list(settings.folds)}, {settings.schedule.epochs} epochs x "
          f"{settings.schedule.iterations} steps per fold, spacing {list(settings.spacing)} mm:\n"
          f"{format_comparison(rows)}\n{report['minutes_total']:.1f} min in all")
    return report


def _report(settings: bench.BenchmarkSettings, rows: Dict[str, Dict[str, Any]], started: float) -> Dict[str, Any]:
    return {"folds": list(settings.folds), "epochs": settings.schedule.epochs,
            "iterations_per_epoch": settings.schedule.iterations, "spacing_mm": list(settings.spacing),
            "starting_filters": settings.starting_filters, "seed": settings.seed, "results": rows,
            "minutes_total": (time.monotonic() - started) / 60}


def format_comparison(rows: Dict[str, Dict[str, Any]]) -> str:
    """One line per configuration: minutes, pooled MAE [95% CI], RMSE, Pearson r."""
    header = f"{'configuration':<18}{'min':>6}{'MAE [95% CI]':>22}{'RMSE':>8}{'r':>7}"
    lines = [header, "-" * len(header)]
    for name, row in rows.items():
        mae, rmse, r = (row["pooled"][m] for m in ("mae", "rmse", "pearson_r"))
        r_value = "n/a" if r["value"] is None or np.isnan(r["value"]) else f"{r['value']:.2f}"
        lines.append(f"{name:<18}{row['minutes']:>6.1f}{mae['value']:>8.2f} [{mae['ci_low']:5.2f}, "
                     f"{mae['ci_high']:5.2f}]{rmse['value']:>8.2f}{r_value:>7}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ixi", type=Path, default=bench.DEFAULT_IXI, help="IXI copy in the FOMO Task 3 layout")
    parser.add_argument("--out", type=Path, default=Path("ixi_recipe_search_output"),
                        help="output folder; a previous output of these benchmarks there is replaced")
    parser.add_argument("--spacing", type=float, nargs="+", default=[DEFAULT_SPACING_MM], metavar="MM",
                        help="planning spacing in mm (default: %(default)s)")
    parser.add_argument("--starting-filters", type=int, default=bench.DEFAULT_STARTING_FILTERS,
                        help="network width (default: %(default)s)")
    parser.add_argument("--folds", type=int, nargs="+", default=list(DEFAULT_FOLDS), choices=range(bench.N_FOLDS),
                        help="folds each configuration trains (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs per fold (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help="steps (batch 2) per epoch (default: %(default)s)")
    parser.add_argument("--recipes", nargs="+", choices=[r.name for r in RECIPES], default=[r.name for r in RECIPES],
                        help="configurations to train, in this order (default: all)")
    parser.add_argument("--subjects", type=int, help="use only the first N subjects (default: all)")
    parser.add_argument("--n-bootstrap", type=int, default=DEFAULT_BOOTSTRAP,
                        help="bootstrap resamples per confidence interval (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and the bootstrap (default: 0)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="training device (default: cpu)")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.epochs < 1 or args.iterations < 1:
        raise FomoInputError(f"--epochs and --iterations must be positive, got {args.epochs} and {args.iterations}")
    settings = bench.BenchmarkSettings(
        ixi=args.ixi.resolve(), out=args.out.resolve(), spacing=tuple(args.spacing),
        starting_filters=args.starting_filters, patch_size=None, pretrained=None,
        schedule=bench.Schedule(args.epochs, args.iterations), folds=tuple(args.folds), subjects=args.subjects,
        seed=args.seed, n_bootstrap=args.n_bootstrap, device=args.device)
    by_name = {r.name: r for r in RECIPES}
    chosen: List[Recipe] = [by_name[name] for name in dict.fromkeys(args.recipes)]  # in the order given
    run_search(settings, chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
