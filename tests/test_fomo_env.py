"""fomo_env: the exports that let nnU-Net's own commands find our trainers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_ext.env import DATA_FOLDER_VARS, EXT_TRAINER_VAR, TRAINER_LOOKUP_FOLDER, ext_trainer_value, main

FOMO_ENV = Path(sys.executable).parent / "fomo_env"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (EXT_TRAINER_VAR, *DATA_FOLDER_VARS)}
    return {**env, **extra}


def _eval_and_print(variables: tuple[str, ...], env: dict[str, str], args: str = "") -> list[str]:
    """Run ``eval "$(fomo_env ARGS)"`` in bash and return the variables' values afterwards."""
    script = f'eval "$({FOMO_ENV} {args})" && ' + " && ".join(f'echo "${{{v}}}"' for v in variables)
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_lookup_folder_holds_only_the_reexporting_module():
    assert sorted(p.name for p in TRAINER_LOOKUP_FOLDER.glob("*.py")) == ["__init__.py", "nnunet_ext_trainers.py"]


def test_eval_exports_the_trainer_folder_and_hints_on_stderr():
    env = _clean_env()
    done = subprocess.run([str(FOMO_ENV)], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [f"export {EXT_TRAINER_VAR}={TRAINER_LOOKUP_FOLDER}"]
    assert all(f"{name} is not set" in done.stderr for name in DATA_FOLDER_VARS)
    assert _eval_and_print((EXT_TRAINER_VAR,), env) == [str(TRAINER_LOOKUP_FOLDER)]


def test_existing_trainer_folders_are_kept_after_ours_without_duplicates():
    current = os.pathsep.join(["/other/trainers", str(TRAINER_LOOKUP_FOLDER), "/more"])
    assert ext_trainer_value(current).split(os.pathsep) == [str(TRAINER_LOOKUP_FOLDER), "/other/trainers", "/more"]
    assert ext_trainer_value(None) == str(TRAINER_LOOKUP_FOLDER)


def test_data_root_exports_only_the_unset_folders(tmp_path: Path):
    env = _clean_env(nnUNet_raw="/already/raw")
    values = _eval_and_print(DATA_FOLDER_VARS, env, f"--data-root {tmp_path}")
    assert values == ["/already/raw", str(tmp_path / "nnUNet_preprocessed"), str(tmp_path / "nnUNet_results")]


def test_paths_with_spaces_survive_eval(tmp_path: Path):
    root = tmp_path / "with space"
    values = _eval_and_print(("nnUNet_results",), _clean_env(), f"--data-root '{root}'")
    assert values == [str(root / "nnUNet_results")]


def test_help_documents_every_flag_and_the_pretrained_override(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--data-root" in text and "FOMO_PRETRAINED" in text
