"""``fomo_demo`` runs the documented commands one after another in its own process, each step's output redirected
into the step's log: every step's log must hold that step's own log messages, and none a logging error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

#: Two conversions in one process, as the demo runs its steps (a fresh interpreter: under pytest the root logger
#: already has pytest's handlers, and the demo's process has none).
TWO_STEPS = """
import sys
from pathlib import Path
from fomo_files import FomoTree
from nnunet_ext import demo
from nnunet_ext.dataset_conversion import convert

root = Path(sys.argv[1])
console = demo.Console(root)
for step, dataset_id in ((1, 7), (2, 8)):
    tree = FomoTree(root / f"fomo-task1-{step}", 1)
    for n in range(6):
        tree.add_case(f"sub_{n}", label=n % 2)
    demo.command_step(console, f"step {step}", root / "logs" / f"step{step}.log",
                      ["fomo_convert", "--task", "1", "-i", str(tree.root), "-d", str(dataset_id)], convert.main)
"""


def test_each_step_log_holds_its_own_messages_and_no_logging_error(tmp_path):
    environment = {**os.environ, "nnUNet_raw": str(tmp_path / "raw"),
                   "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", TWO_STEPS, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=environment)
    assert done.returncode == 0, done.stderr
    assert "Logging error" not in done.stdout + done.stderr
    for step, dataset_id in ((1, 7), (2, 8)):
        log = (tmp_path / "logs" / f"step{step}.log").read_text()
        assert "Logging error" not in log
        # convert's INFO lines: where it found the input and what it wrote, each in its own step's log
        assert f"INFO found the nifti layout in {tmp_path / f'fomo-task1-{step}'}" in log, log
        assert f"Dataset{dataset_id:03d}" in log and "INFO wrote" in log, log
