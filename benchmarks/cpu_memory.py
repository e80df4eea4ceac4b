"""Training steps per second on the CPU with glibc's default malloc against freed memory kept in the process
(``nnunet_ext.utils.cpu_memory``, which the trainers apply on the CPU), side by side in one run.

Each round runs both modes, alternated, each in a fresh process: a regression FomoUNet (``--filters``, IXI-like
2 mm whole-head input of ``--shape``, batch 2) trains ``--steps`` AdamW steps after two warm-up steps; the process
reports its steps per second, minor page faults and user / system CPU seconds. Writes ``cpu_memory.json`` under
``--out`` and prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a clone without installing
    sys.path.insert(0, str(REPO))

from reporting import check_out_folder, write_report  # noqa: E402  (beside this script)

from nnunet_ext.errors import cli_entry  # noqa: E402
from nnunet_ext.utils.arguments import int_at_least  # noqa: E402

RESULT_STEM = "cpu_memory"
MODES = ("default", "retain")
#: A 2 mm whole head of IXI (120 x 120 x 90 voxels) cropped to the multiples of 16 the network takes.
DEFAULT_SHAPE = (64, 64, 48)
DEFAULT_FILTERS = 16
DEFAULT_STEPS = 8
DEFAULT_ROUNDS = 3
THREADS = 2
QUICK = {"rounds": 1, "steps": 2, "shape": (32, 32, 32), "filters": 4}

STEPS_SCRIPT = """
import json, resource, sys, time
import torch
mode, steps, filters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shape = [int(edge) for edge in sys.argv[4:7]]
if mode == "retain":
    from nnunet_ext.utils.cpu_memory import retain_freed_memory
    assert retain_freed_memory()
from nnunet_ext.networks import FomoUNet
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[7]))
network = FomoUNet(1, 1, starting_filters=filters, task_type="regression", head_pool_levels=(1, 2, 3, 4),
                   head_pooling="avgmax")
optimizer = torch.optim.AdamW(network.parameters(), 1e-3)
x = torch.rand(2, 1, *shape)

def step():
    optimizer.zero_grad(set_to_none=True)
    network(x).pow(2).mean().backward()
    optimizer.step()

step(); step()
before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"steps_per_s": steps / seconds, "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
                  "user_s": after.ru_utime - before.ru_utime, "system_s": after.ru_stime - before.ru_stime}))
"""


def mode_command(mode: str, steps: int, filters: int, shape: Sequence[int]) -> List[str]:
    """The command line of one mode's fresh process (see :data:`STEPS_SCRIPT`)."""
    return [sys.executable, "-c", STEPS_SCRIPT, mode, str(steps), str(filters), *map(str, shape), str(THREADS)]


def mode_result(stdout: str) -> Dict[str, float]:
    """What a mode's process reported (its last line of output)."""
    return json.loads(stdout.strip().splitlines()[-1])


def run_mode(mode: str, steps: int, filters: int, shape: Sequence[int]) -> Dict[str, float]:
    done = subprocess.run(mode_command(mode, steps, filters, shape), capture_output=True, text=True, check=True)
    return mode_result(done.stdout)


def run_benchmark(rounds: int, steps: int, filters: int, shape: Sequence[int]) -> Dict[str, Any]:
    runs: Dict[str, list] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            runs[mode].append(run_mode(mode, steps, filters, shape))
    medians = {mode: {key: statistics.median(run[key] for run in runs[mode]) for key in runs[mode][0]}
               for mode in MODES}
    return {"rounds": rounds, "steps": steps, "filters": filters, "shape": list(shape), "threads": THREADS,
            "runs": runs, "medians": medians,
            "speedup": medians["retain"]["steps_per_s"] / medians["default"]["steps_per_s"]}


def format_table(report: Dict[str, Any]) -> str:
    rows = [f"| {mode} | {m['steps_per_s']:.3f} | {m['minor_faults_per_step']:.0f} | {m['user_s']:.2f} | "
            f"{m['system_s']:.2f} |" for mode, m in report["medians"].items()]
    return "\n".join([
        f"FomoUNet regression, {report['filters']} filters, batch 2 of {'x'.join(map(str, report['shape']))}, "
        f"{report['threads']} threads: medians of {report['rounds']} alternated rounds of {report['steps']} steps",
        "| malloc | steps/s | page faults / step | user s | system s |", "|---|---|---|---|---|", *rows,
        f"speed-up with freed memory retained: {report['speedup']:.2f}x"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for cpu_memory.json (created if missing)")
    parser.add_argument("--rounds", type=int_at_least(1), default=DEFAULT_ROUNDS, help="alternated rounds")
    parser.add_argument("--steps", type=int_at_least(1), default=DEFAULT_STEPS, help="timed steps per process")
    parser.add_argument("--filters", type=int_at_least(1), default=DEFAULT_FILTERS, help="starting filters")
    parser.add_argument("--shape", type=int_at_least(32), nargs=3, default=DEFAULT_SHAPE, metavar=("X", "Y", "Z"),
                        help="input voxels (multiples of 16)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one round of 2 steps on a small input")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_out_folder(args.out)
    settings = QUICK if args.quick else {"rounds": args.rounds, "steps": args.steps, "shape": args.shape,
                                         "filters": args.filters}
    report = run_benchmark(settings["rounds"], settings["steps"], settings["filters"], settings["shape"])
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(args.out, RESULT_STEM, report, format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
