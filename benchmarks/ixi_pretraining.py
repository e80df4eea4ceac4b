"""Real MRI, pretrained against scratch: brain age on 109 IXI T1 scans from our own self-supervised encoders.

1. **Pretraining**, once per source: the 76 unlabelled T1 scans of ``../shared/data/unlabelled_mri`` (other
   scanners and studies: a small FOMO60K) alone (``pool``: no IXI image, a clean transfer), and together with the
   109 IXI images, never their ages (``pool_ixi``: transductive for images). Each goes through the commands' own
   functions: ``fomo_convert --task pretrain`` -> ``fomo_plan_and_preprocess`` -> ``FomoPretrainTrainer`` (or
   ``--pretrain-trainer``; fold ``all``, a fixed number of steps: the stated CPU budget) -> ``fomo_export_pretrained``.
2. **Fine-tuning**: ``ixi_brain_age.py``'s five folds at one fixed schedule from each checkpoint
   (``FomoRegressionTrainer`` and ``_FrozenEncoder``) and from random weights (``FomoRegressionTrainer_Scratch``):
   equal steps, equal subjects, equal folds, one head (``--head-pool-levels``, ``--head-pooling``).
3. **Linear probes** (``fomo_embed`` + ``fomo_linear_probe``: ridge on the frozen encoder's pooled features, the same
   folds) of every checkpoint and of a random encoder of the same width.
4. **Report**: pooled out-of-fold MAE and Pearson r with bootstrap 95% CIs per arm beside ridge on voxels and the
   training mean, and per pretrained arm the paired bootstrap of the per-subject absolute errors (pretrained minus
   scratch: negative favours pretraining). ``ixi_pretraining.json`` and ``ixi_pretraining.md`` under ``--out``.

Every stage runs in a fresh (spawned) process with its own nnU-Net folders under ``--out``, since nnU-Net reads its
paths once per process; each writes its log to ``--out/logs/``, and the console shows one line per stage.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
for _path in (REPO, BENCHMARKS):  # run as a script from a clone without installing
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import ixi_brain_age as ixi  # noqa: E402  (beside this script)
from reporting import check_device, check_out_folder  # noqa: E402

from nnunet_ext.errors import FomoInputError, cli_entry  # noqa: E402  (light: no nnU-Net import)

DEFAULT_POOL = REPO.parent / "shared" / "data" / "unlabelled_mri"
MARKER = ".ixi_pretraining_benchmark"
RESULT_STEM = "ixi_pretraining"

#: Pretraining sources and their nnU-Net dataset ids (7xx, apart from the IXI dataset's 731).
SOURCE_POOL, SOURCE_POOL_IXI = "pool", "pool_ixi"
SOURCES = {SOURCE_POOL: "unlabelled pool alone (no IXI image)",
           SOURCE_POOL_IXI: "unlabelled pool + IXI images (never ages): transductive for images"}
POOL_DATASET_IDS = {SOURCE_POOL: 741, SOURCE_POOL_IXI: 742}
PRETRAIN_TRAINER = "FomoPretrainTrainer"
#: Pretraining losses: the baseline's reconstruction of the whole volume (the default), or of the masked cubes only
#: (four runs of it probed IXI at 9.93-13.00 years with the bottleneck's average, one whole-volume run at 11.48).
PRETRAIN_TRAINERS = (PRETRAIN_TRAINER, f"{PRETRAIN_TRAINER}_MaskedOnly")
SCRATCH = "scratch"
#: Trainers that may fine-tune the pretrained checkpoints: everything trains, or the encoder stays as pretrained
#: (the head alone trains, from the linear probe every case-level trainer starts from).
FINETUNE_TRAINERS = (ixi.PRETRAINED_TRAINER, f"{ixi.PRETRAINED_TRAINER}_FrozenEncoder", f"{ixi.PRETRAINED_TRAINER}_LLRD")
#: Both ways of fine-tuning by default: everything, and the head alone on the encoder as pretrained.
DEFAULT_FINETUNE_TRAINERS = FINETUNE_TRAINERS[:2]
RANDOM_ENCODER = "random"

#: CPU defaults: 4 mm (the spacing at which the CPU scratch benchmark did best per minute: MAE 12.49 in 16
#: minutes), 8 starting filters, whole-head patches, 500 pretraining and 100 fine-tuning steps per fold (the
#: measured run of benchmarks/README.md: about 16 minutes for one source on 2 cores).
DEFAULT_SPACING_MM = 4.0
DEFAULT_STARTING_FILTERS = 8
DEFAULT_PRETRAIN_EPOCHS, DEFAULT_PRETRAIN_ITERATIONS = 10, 50
DEFAULT_EPOCHS, DEFAULT_ITERATIONS = 4, 25
#: The head of every arm and probe: average and maximum of encoder levels 1-4, the demo's Task 3 head (chosen on
#: synthetic data; brain age is an amount spread over the brain, which one bottleneck average barely holds).
IXI_HEAD_POOL_LEVELS, IXI_HEAD_POOLING = (1, 2, 3, 4), "avgmax"
#: --quick: the machinery only (a few subjects, a few steps, 2 folds).
QUICK_SUBJECTS, QUICK_POOL_SUBJECTS = 12, 8
QUICK_PRETRAIN_EPOCHS, QUICK_PRETRAIN_ITERATIONS = 2, 2
QUICK_EPOCHS, QUICK_ITERATIONS = 2, 2
QUICK_FOLDS = (0, 1)
QUICK_BOOTSTRAP = 100


@dataclass(frozen=True)
class Settings:
    pool: Path
    ixi: Path
    out: Path
    sources: tuple
    #: The sources whose checkpoints are fine-tuned (all are probed).
    finetune_from: tuple
    spacing: float
    starting_filters: int
    #: None: the whole head (as the fine-tuning).
    pretrain_patch_size: Optional[tuple]
    pretrain_epochs: int
    pretrain_iterations: int
    epochs: int
    iterations: int
    folds: tuple
    subjects: Optional[int]
    pool_subjects: Optional[int]
    seed: int
    n_bootstrap: int
    device: str
    probes: bool
    #: A folder of ``<source>.ckpt`` from an earlier run: fine-tune and probe those instead of pretraining again.
    reuse_checkpoints: Optional[Path] = None
    #: The trainers fine-tuning each pretrained checkpoint, one arm each (scratch: ``ixi_brain_age.SCRATCH_TRAINER``).
    finetune_trainers: tuple = (ixi.PRETRAINED_TRAINER,)
    #: The pretraining trainer (its loss) of every source.
    pretrain_trainer: str = PRETRAIN_TRAINER
    #: The head's pooling in fine-tuning, and the probes' (None: the plans' defaults).
    head_pool_levels: Optional[tuple] = None
    head_pooling: Optional[str] = None


# -- stages, each in its own process ------------------------------------------------------------------------


def run_stage(settings: Settings, name: str, target: Callable[..., Any], *args: Any) -> float:
    """Run ``target(*args)`` in a fresh spawned process logging to ``logs/<name>.log``; minutes taken.

    A fresh process per stage: nnU-Net reads its three folders once, at import.
    """
    log = settings.out / "logs" / f"{name}.log"
    print(f"{time.strftime('%H:%M:%S')} {name} (log: {log}) ...", flush=True)
    started = time.monotonic()
    process = multiprocessing.get_context("spawn").Process(target=_logged, args=(log, target, *args), name=name)
    process.start()
    try:
        process.join()
    finally:  # interrupted (Ctrl-C, SIGTERM): stop the stage too, or multiprocessing's exit would wait for it
        if process.is_alive():
            process.terminate()
            process.join()
    minutes = (time.monotonic() - started) / 60
    if process.exitcode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.is_file() else ""
        raise RuntimeError(f"stage {name} failed (exit {process.exitcode}) after {minutes:.1f} min; end of {log}:\n"
                           f"{tail}")
    print(f"{time.strftime('%H:%M:%S')} {name} done in {minutes:.1f} min", flush=True)
    return minutes


def _logged(log: Path, target: Callable[..., Any], *args: Any) -> None:
    with open(log, "w") as stream:  # the descriptors too, so nnU-Net's and the workers' output land there
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        target(*args)


def link_subjects(folders: Sequence[Path], target: Path, limit: Optional[int]) -> Path:
    """A FOMO60K folder linking the ``sub_<N>`` folders of each of ``folders`` (the first ``limit`` of each)."""
    target.mkdir(parents=True)
    for folder in folders:
        subjects = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("sub_"))
        for subject in subjects[:limit]:
            (target / subject.name).symlink_to(subject.resolve())
    return target


def pretrain(settings: Settings, source: str, images: Path, nnunet_root: Path, checkpoint: Path) -> None:
    """Convert, plan and pretrain on ``images``; export the network as a FOMO checkpoint (in a stage process)."""
    nnunet_root.mkdir()
    ixi.configure_environment(nnunet_root)
    from nnunet_ext.dataset_conversion.convert import dataset_folder
    from nnunet_ext.dataset_conversion.pretraining_pool import POOL_NAME, convert_pretraining_pool
    from nnunet_ext.preprocessing.plan_and_preprocess import fomo_plan_and_preprocess
    from nnunet_ext.preprocessing.planner import FomoPlanSettings
    from nnunet_ext.pretrained.export import export_pretrained

    dataset_id = POOL_DATASET_IDS[source]
    dataset = convert_pretraining_pool(images, dataset_folder(dataset_id, POOL_NAME, overwrite=False),
                                       seed=settings.seed)
    spacing = (settings.spacing,) * 3
    patch = settings.pretrain_patch_size or ixi.whole_head_patch(dataset, spacing)
    fomo_plan_and_preprocess(dataset_id, FomoPlanSettings(spacing=spacing, patch_size=patch,
                                                          starting_filters=settings.starting_filters), num_processes=1)
    schedule = ixi.Schedule(settings.pretrain_epochs, settings.pretrain_iterations)
    fold_folder, _ = ixi.train_fold(settings.pretrain_trainer, "all", schedule, settings.device, dataset_id)
    export_pretrained(fold_folder / "checkpoint_final.pth", checkpoint)


def arm_name(source: str, trainer: str) -> str:
    """The arm fine-tuning ``source`` with ``trainer``: the source, and the trainer's variant suffix if any."""
    return source + trainer[len(ixi.PRETRAINED_TRAINER):]


def finetune(settings: Settings, arm_out: Path, checkpoint: Optional[Path],
             trainer: str = ixi.PRETRAINED_TRAINER) -> None:
    """``ixi_brain_age.py``'s five folds at the fixed schedule, from ``checkpoint`` with ``trainer`` or from
    scratch."""
    ixi.run_benchmark(ixi.BenchmarkSettings(
        ixi=settings.ixi, out=arm_out, spacing=(settings.spacing,),
        starting_filters=None if checkpoint else settings.starting_filters, patch_size=None, pretrained=checkpoint,
        schedule=ixi.Schedule(settings.epochs, settings.iterations), folds=settings.folds,
        subjects=settings.subjects, seed=settings.seed, n_bootstrap=settings.n_bootstrap, device=settings.device,
        pretrained_trainer=trainer, head_pool_levels=settings.head_pool_levels, head_pooling=settings.head_pooling))


def probe(settings: Settings, nnunet_root: Path, checkpoint: Optional[Path], out: Path) -> None:
    """Embed the planned IXI cases with a frozen encoder and fit the linear probe on the benchmark's folds."""
    ixi.configure_environment(nnunet_root)
    import torch
    from nnunet_ext.evaluation.linear_probe import linear_probe, read_embeddings
    from nnunet_ext.inference.embed import embed_dataset
    from nnunet_ext.networks.unet import DEFAULT_HEAD_POOL_LEVELS, DEFAULT_HEAD_POOLING
    from nnunet_ext.utils.files import atomic_write_json

    embed_dataset(str(ixi.DATASET_ID), out / "embeddings", checkpoint,
                  None if checkpoint else settings.starting_filters,
                  settings.head_pool_levels or DEFAULT_HEAD_POOL_LEVELS, settings.head_pooling or DEFAULT_HEAD_POOLING,
                  torch.device(settings.device))
    summary, records = linear_probe(*read_embeddings(out / "embeddings"), seed=settings.seed,
                                    n_resamples=settings.n_bootstrap)
    atomic_write_json(out / "linear_probe.json", {"summary": summary, "cases": records})


# -- the comparison -----------------------------------------------------------------------------------------


def absolute_errors(predictions: Dict[str, Dict[str, float]], cases: Sequence[str]) -> np.ndarray:
    return np.array([abs(predictions[c]["predicted"] - predictions[c]["true"]) for c in cases])


def paired_difference(pretrained: Dict[str, Dict[str, float]], scratch: Dict[str, Dict[str, float]],
                      seed: int, n_resamples: int) -> Dict[str, float]:
    """Mean per-subject absolute error, pretrained minus scratch, with a paired bootstrap 95% CI (subjects
    resampled, both arms together)."""
    from nnunet_ext.metrics.bootstrap import bootstrap_cis

    cases = sorted(scratch)
    if sorted(pretrained) != cases:
        raise FomoInputError("the pretrained and scratch arms predicted different subjects; run both with one seed")
    errors = absolute_errors(pretrained, cases), absolute_errors(scratch, cases)
    interval = bootstrap_cis(lambda a, b: {"difference": float(np.mean(a) - np.mean(b))}, *errors,
                             names=("difference",), n_resamples=n_resamples, seed=seed)["difference"]
    value = float(np.mean(errors[0]) - np.mean(errors[1]))
    return {"value": value, "ci_low": interval.low, "ci_high": interval.high, "n_subjects": len(cases),
            "ci_excludes_zero": bool(interval.high < 0 or interval.low > 0)}


def probe_predictions(folder: Path) -> Dict[str, Dict[str, float]]:
    """A linear probe's out-of-fold predictions in the fine-tuning reports' form."""
    records = json.loads((folder / "linear_probe.json").read_text())["cases"]
    return {r["case"]: {"true": r["target"], "predicted": r["prediction"]} for r in records}


def compare(arms: Dict[str, Path], probes: Dict[str, Path], seed: int, n_bootstrap: int) -> Dict[str, Any]:
    """Read every arm's and probe's results; the paired differences of each fine-tuned arm against scratch and of
    each pretrained encoder's probe against the random encoder's."""
    reports = {arm: json.loads((folder / f"{ixi.RESULT_STEM}.json").read_text()) for arm, folder in arms.items()}
    rows = {f"fine-tuned, {arm}": reports[arm]["results"][ixi.MODEL_CNN]["pooled"] for arm in arms}
    probe_summaries = {encoder: json.loads((folder / "linear_probe.json").read_text())["summary"]
                       for encoder, folder in probes.items()}
    rows.update({f"linear probe, {encoder} encoder": summary["pooled_with_ci"]
                 for encoder, summary in probe_summaries.items()})
    for baseline in (ixi.MODEL_RIDGE, ixi.MODEL_MEAN):
        rows[baseline] = reports[SCRATCH]["results"][baseline]["pooled"]
    scratch = reports[SCRATCH]["predictions"][ixi.MODEL_CNN]
    paired = {f"fine-tuned from {arm} - from scratch": paired_difference(
        reports[arm]["predictions"][ixi.MODEL_CNN], scratch, seed, n_bootstrap)
        for arm in arms if arm != SCRATCH}
    if RANDOM_ENCODER in probes:
        random_probe = probe_predictions(probes[RANDOM_ENCODER])
        paired.update({f"linear probe, {encoder} - random encoder": paired_difference(
            probe_predictions(folder), random_probe, seed, n_bootstrap)
            for encoder, folder in probes.items() if encoder != RANDOM_ENCODER})
    spread = {encoder: summary["feature_spread"] for encoder, summary in probe_summaries.items()
              if "feature_spread" in summary}  # probes written before fomo_linear_probe reported it have none
    return {"rows": rows, "paired_mae_difference": paired, "feature_spread": spread}


def interval(entry: Dict[str, float]) -> str:
    return f"{entry['value']:.2f} [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}]"


def markdown(report: Dict[str, Any]) -> str:
    s = report["settings"]
    lines = ["# IXI brain age: pretrained against scratch", "",
             f"{s['spacing']:g} mm, {s['starting_filters']} starting filters; "
             + (f"checkpoints of an earlier run ({s['reuse_checkpoints']})" if s.get("reuse_checkpoints") else
                f"pretraining ({s.get('pretrain_trainer', PRETRAIN_TRAINER)}) {s['pretrain_epochs']} x "
                f"{s['pretrain_iterations']} steps per source")
             + (f"; the head pools levels {s['head_pool_levels']} by {s.get('head_pooling') or 'avg'} (fine-tuning and "
                "probes)" if s.get("head_pool_levels") else "")
             + f"; fine-tuning {s['epochs']} x {s['iterations']} steps per fold (from a checkpoint: "
             f"{', '.join(s.get('finetune_trainers', [ixi.PRETRAINED_TRAINER]))}; from scratch: {ixi.SCRATCH_TRAINER}), "
             f"folds {s['folds']}; pooled out-of-fold, bootstrap 95% CIs; ages in years.", "",
             "| model | MAE | Pearson r |", "|---|---|---|"]
    for name, result in report["comparison"]["rows"].items():
        lines.append(f"| {name} | {interval(result['mae'])} | {interval(result['pearson_r'])} |")
    lines += ["", "Paired bootstrap of per-subject absolute errors, pretrained minus scratch or random (negative: "
                  "pretraining helps); " + "; ".join(f"{k}: {v}" for k, v in SOURCES.items()) + ":", "",
              "| comparison | MAE difference [95% CI] | CI excludes 0 |", "|---|---|---|"]
    for name, d in report["comparison"]["paired_mae_difference"].items():
        lines.append(f"| {name} | {interval(d)} | {'yes' if d['ci_excludes_zero'] else 'no'} |")
    spread = report["comparison"].get("feature_spread")
    if spread:
        lines += ["", "Spread of each probed encoder's pooled features between subjects (median standard deviation; "
                      "a head learns slowly from features that barely vary): "
                  + ", ".join(f"{encoder} {v['median_std_between_cases']:.3g}" for encoder, v in spread.items()) + "."]
    minutes = ", ".join(f"{k} {v:.1f}" for k, v in report["minutes"].items())
    lines += ["", f"Minutes: {minutes}."]
    return "\n".join(lines) + "\n"


def run(settings: Settings) -> Dict[str, Any]:
    ixi.check_ixi(settings.ixi)
    if not settings.pool.is_dir():
        raise FomoInputError("no such folder (the unlabelled pool)", settings.pool)
    ixi.prepare_output(settings.out, MARKER, "benchmarks/ixi_pretraining.py")
    (settings.out / "logs").mkdir()
    minutes: Dict[str, float] = {}
    checkpoints: Dict[str, Path] = {}
    for source in settings.sources:
        if settings.reuse_checkpoints is not None:
            checkpoints[source] = settings.reuse_checkpoints / f"{source}.ckpt"
            continue
        folders = [settings.pool] + ([settings.ixi / "preprocessed"] if source == SOURCE_POOL_IXI else [])
        images = link_subjects(folders, settings.out / "images" / source, settings.pool_subjects)
        checkpoints[source] = settings.out / "checkpoints" / f"{source}.ckpt"
        checkpoints[source].parent.mkdir(exist_ok=True)
        minutes[f"pretrain_{source}"] = run_stage(settings, f"pretrain_{source}", pretrain, settings, source, images,
                                                  settings.out / f"pretrain_{source}", checkpoints[source])
    pretrained_arms = {arm_name(source, trainer): (source, trainer)
                       for source in settings.finetune_from for trainer in settings.finetune_trainers}
    arms = {SCRATCH: settings.out / f"finetune_{SCRATCH}",
            **{arm: settings.out / f"finetune_{arm}" for arm in pretrained_arms}}
    minutes[f"finetune_{SCRATCH}"] = run_stage(settings, f"finetune_{SCRATCH}", finetune, settings, arms[SCRATCH],
                                               None)
    probes: Dict[str, Path] = {}
    if settings.probes:  # cheap, and they need only the scratch arm's planned IXI dataset: before the long arms
        for encoder in (RANDOM_ENCODER, *settings.sources):
            probes[encoder] = settings.out / f"probe_{encoder}"
            minutes[f"probe_{encoder}"] = run_stage(settings, f"probe_{encoder}", probe, settings, arms[SCRATCH],
                                                    checkpoints.get(encoder), probes[encoder])
    for arm, (source, trainer) in pretrained_arms.items():
        minutes[f"finetune_{arm}"] = run_stage(settings, f"finetune_{arm}", finetune, settings, arms[arm],
                                               checkpoints[source], trainer)
    return write_report(settings.out, {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
                                       "sources": {s: SOURCES[s] for s in settings.sources}},
                        arms, probes, {k: str(v) for k, v in checkpoints.items()}, minutes)


def write_report(out: Path, settings: Dict[str, Any], arms: Dict[str, Path], probes: Dict[str, Path],
                 checkpoints: Dict[str, str], minutes: Dict[str, float]) -> Dict[str, Any]:
    """``ixi_pretraining.json`` and ``.md`` from the stages' outputs; the Markdown is printed too."""
    from nnunet_ext.evaluation.report import json_safe
    from nnunet_ext.utils.files import atomic_write_json, atomic_write_text

    report = json_safe({"settings": settings, "checkpoints": checkpoints, "minutes": minutes,
                        "comparison": compare(arms, probes, settings["seed"], settings["n_bootstrap"])})
    atomic_write_json(out / f"{RESULT_STEM}.json", report)
    text = markdown(report)
    atomic_write_text(out / f"{RESULT_STEM}.md", text)
    print("\n" + text)
    return report


def rescore(out: Path) -> Dict[str, Any]:
    """Rewrite the report of the finished run in ``out`` from its stages' outputs, training nothing."""
    previous = out / f"{RESULT_STEM}.json"
    if not previous.is_file():
        raise FomoInputError(f"no {previous.name} of a finished run to rescore", out)
    old = json.loads(previous.read_text())
    arms = {folder.name.split("_", 1)[1]: folder for folder in sorted(out.glob("finetune_*"))}
    probes = {folder.name.split("_", 1)[1]: folder for folder in sorted(out.glob("probe_*"))}
    return write_report(out, old["settings"], arms, probes, old["checkpoints"], old["minutes"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=Path, default=DEFAULT_POOL,
                        help=f"unlabelled scans in the FOMO60K layout (default: {DEFAULT_POOL})")
    parser.add_argument("--ixi", type=Path, default=ixi.DEFAULT_IXI,
                        help=f"IXI copy in the FOMO Task 3 layout (default: {ixi.DEFAULT_IXI})")
    parser.add_argument("--out", type=Path, default=Path("ixi_pretraining_output"),
                        help="output folder; a previous output of this benchmark there is replaced, any other "
                             "non-empty folder refused (default: %(default)s)")
    parser.add_argument("--sources", nargs="+", choices=sorted(SOURCES), default=sorted(SOURCES),
                        help="what to pretrain on: " + "; ".join(f"{k}: {v}" for k, v in SOURCES.items()))
    parser.add_argument("--finetune-from", nargs="+", choices=sorted(SOURCES),
                        help="the pretrained sources to fine-tune from (default: every one of --sources; each is "
                             "linear-probed either way)")
    parser.add_argument("--finetune-trainers", nargs="+", choices=FINETUNE_TRAINERS,
                        default=list(DEFAULT_FINETUNE_TRAINERS),
                        help="the trainers fine-tuning each checkpoint, an arm each (default: %(default)s; from "
                             f"scratch: {ixi.SCRATCH_TRAINER})")
    parser.add_argument("--spacing", type=float, default=DEFAULT_SPACING_MM,
                        help="isotropic spacing in mm of pretraining and fine-tuning (default: %(default)s on a CPU;"
                             " 1 on a GPU, the FOMO pretraining's)")
    parser.add_argument("--starting-filters", type=int, default=DEFAULT_STARTING_FILTERS,
                        help="network width of every arm (default: %(default)s; the real UNet-B has 32)")
    parser.add_argument("--pretrain-patch-size", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help="pretraining patch in voxels (multiples of 16; default: the whole head, as fine-tuning)")
    parser.add_argument("--pretrain-trainer", choices=PRETRAIN_TRAINERS, default=PRETRAIN_TRAINER,
                        help="pretraining trainer: the baseline's whole-volume reconstruction loss, or the masked "
                             "cubes only (default: %(default)s)")
    parser.add_argument("--pretrain-epochs", type=int, default=DEFAULT_PRETRAIN_EPOCHS,
                        help="pretraining epochs per source (default: %(default)s)")
    parser.add_argument("--pretrain-iterations", type=int, default=DEFAULT_PRETRAIN_ITERATIONS,
                        help="pretraining steps per epoch (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help="fine-tuning epochs per fold, every arm (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help="fine-tuning steps per epoch, every arm (default: %(default)s)")
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(ixi.N_FOLDS)), choices=range(ixi.N_FOLDS),
                        help="folds to fine-tune (default: all five)")
    ixi.add_head_arguments(parser, IXI_HEAD_POOL_LEVELS, IXI_HEAD_POOLING)
    parser.add_argument("--reuse-checkpoints", type=Path, metavar="DIR",
                        help="skip pretraining: fine-tune and probe DIR/<source>.ckpt of an earlier run (its "
                             "checkpoints/ folder, copied out of --out, which a run replaces)")
    parser.add_argument("--rescore", action="store_true",
                        help="train nothing: rewrite the report of the finished run in --out from its stages' outputs")
    parser.add_argument("--no-probes", action="store_true", help="skip the linear probes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and the bootstrap (default: 0)")
    parser.add_argument("--n-bootstrap", type=int, default=ixi.DEFAULT_BOOTSTRAP,
                        help="bootstrap resamples per confidence interval (default: %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="training device (default: cpu)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_SUBJECTS} IXI and {QUICK_POOL_SUBJECTS} pool subjects, a few steps, "
                             f"folds {QUICK_FOLDS}; its numbers mean nothing")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    for flag in ("spacing", "starting_filters", "pretrain_epochs", "pretrain_iterations", "epochs", "iterations",
                 "n_bootstrap"):
        if not getattr(args, flag) > 0:
            raise FomoInputError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.epochs < 2:
        raise FomoInputError(f"--epochs must be at least 2, got {args.epochs}")
    if not set(args.finetune_from or ()) <= set(args.sources):
        raise FomoInputError(f"--finetune-from {args.finetune_from}: only sources pretrained on (--sources "
                             f"{args.sources}) can be fine-tuned")
    for source in args.sources if args.reuse_checkpoints else ():
        if not (args.reuse_checkpoints / f"{source}.ckpt").is_file():
            raise FomoInputError(f"no {source}.ckpt to reuse", args.reuse_checkpoints)
    check_out_folder(args.out)
    check_device(args.device)
    settings = Settings(pool=args.pool.resolve(), ixi=args.ixi.resolve(), out=args.out.resolve(),
                        sources=tuple(args.sources), finetune_from=tuple(args.finetune_from or args.sources),
                        spacing=args.spacing, starting_filters=args.starting_filters,
                        pretrain_patch_size=tuple(args.pretrain_patch_size) if args.pretrain_patch_size else None,
                        pretrain_epochs=args.pretrain_epochs, pretrain_iterations=args.pretrain_iterations,
                        epochs=args.epochs, iterations=args.iterations, folds=tuple(args.folds), subjects=None,
                        pool_subjects=None, seed=args.seed, n_bootstrap=args.n_bootstrap, device=args.device,
                        probes=not args.no_probes,
                        reuse_checkpoints=args.reuse_checkpoints.resolve() if args.reuse_checkpoints else None,
                        finetune_trainers=tuple(dict.fromkeys(args.finetune_trainers)),
                        pretrain_trainer=args.pretrain_trainer, head_pool_levels=ixi.head_pool_levels(args),
                        head_pooling=args.head_pooling)
    if args.quick:
        settings = replace(settings, spacing=ixi.QUICK_SPACING_MM, pretrain_patch_size=None,
                           pretrain_epochs=QUICK_PRETRAIN_EPOCHS,
                           pretrain_iterations=QUICK_PRETRAIN_ITERATIONS, epochs=QUICK_EPOCHS,
                           iterations=QUICK_ITERATIONS, folds=QUICK_FOLDS, subjects=QUICK_SUBJECTS,
                           pool_subjects=QUICK_POOL_SUBJECTS, n_bootstrap=QUICK_BOOTSTRAP)
    return settings


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rescore:
        rescore(args.out.resolve())
    else:
        run(settings_from_args(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
