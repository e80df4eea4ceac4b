"""``fomo_env``: print the shell exports that let nnU-Net's own commands find our trainers.

Usage: ``eval "$(fomo_env)"`` (bash/zsh). It exports ``nnUNet_extTrainer`` pointing at our trainer lookup folder
(kept in front of any folders already listed) and, with ``--data-root``, nnU-Net's three data folders that are not
set yet. Hints about unset folders go to stderr, so ``eval`` shows them without executing them.

Deliberately light (no torch, no nnU-Net import): it runs in every new shell.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from nnunet_ext.errors import cli_entry

#: nnU-Net 2.8's variable listing extra trainer folders (os.pathsep-separated).
EXT_TRAINER_VAR = "nnUNet_extTrainer"
#: Folder nnU-Net scans for our trainers; its module only re-exports them (nnunet_ext/trainers/nnunet_lookup).
TRAINER_LOOKUP_FOLDER = Path(__file__).resolve().parent / "trainers" / "nnunet_lookup"
#: nnU-Net's data folders, each named like its variable below ``--data-root``.
DATA_FOLDER_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def _export(name: str, value: str) -> str:
    """One shell-quoted ``export`` line (folders may contain spaces)."""
    return f"export {name}={shlex.quote(value)}"


def ext_trainer_value(current: str | None) -> str:
    """``nnUNet_extTrainer`` with our folder first, keeping other folders already listed (and no duplicate)."""
    ours = str(TRAINER_LOOKUP_FOLDER)
    others = [folder for folder in (current or "").split(os.pathsep) if folder and folder != ours]
    return os.pathsep.join([ours, *others])


def export_lines(environ: dict[str, str], data_root: Path | None) -> tuple[list[str], list[str]]:
    """(export lines for stdout, hint lines for stderr) for the environment ``environ``."""
    exports = [_export(EXT_TRAINER_VAR, ext_trainer_value(environ.get(EXT_TRAINER_VAR)))]
    hints = []
    for name in DATA_FOLDER_VARS:
        if environ.get(name):
            continue
        if data_root is None:
            hints.append(f"# {name} is not set: run `fomo_env --data-root DIR`, or export {name}=/path/to/{name}")
        else:
            exports.append(_export(name, str((data_root / name).resolve())))
    return exports, hints


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo_env",
        description="Print shell exports so that nnUNetv2_train / nnUNetv2_predict find the FOMO trainers "
                    "(-tr FomoFinetuneTrainer ...). Use as: eval \"$(fomo_env)\". The pretrained checkpoint "
                    "comes from the plans; FOMO_PRETRAINED=CKPT overrides it for one run.")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="also export nnUNet_raw, nnUNet_preprocessed and nnUNet_results as DATA_ROOT/<name> "
                             "for each of them that is not set yet (folders already set are left alone)")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exports, hints = export_lines(dict(os.environ), args.data_root)
    print("\n".join(exports))
    if hints:
        print("\n".join(hints), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
