"""Make nnU-Net find our normalisation scheme, in this process and in the processes it spawns.

Why this is needed: nnU-Net resolves the ``normalization_schemes`` names of a plans file with
``recursive_find_python_class``, which imports the modules of ``nnunetv2/preprocessing/normalization`` and
returns the first one holding an attribute of that name. Our scheme lives in our package, so it is not found,
and the preprocessing of both training (``DefaultPreprocessor.run``) and prediction
(``nnunetv2.inference.data_iterators.preprocessing_iterator_fromfiles``) runs in processes started with the
'spawn' context, which import only what they unpickle.

The mechanism, in two explicit, idempotent steps (:func:`register_with_nnunet`):

1. *This process*: our scheme class is set as an attribute of nnU-Net's
   ``default_normalization_schemes`` module, the first module the lookup imports. The plans keep nnU-Net's own
   ``DefaultPreprocessor``, so no other lookup is affected.
2. *Spawned workers*: every worker that preprocesses receives a pickled ``ConfigurationManager`` (it is an
   argument of both worker functions). We register a reducer for that class with
   ``multiprocessing.reduction.ForkingPickler``, the pickler multiprocessing uses for process arguments and
   pool tasks, and nothing else. It pickles the same state, rebuilt by :func:`_rebuild_registered`, a function of
   this module: unpickling it imports our package in the worker and registers there before nnU-Net normalises.

Who calls it: ``fomo_plan_and_preprocess`` before preprocessing, and ``nnunet_ext/trainers/__init__.py`` at
import. nnU-Net's trainer lookup imports our trainers in the main process of ``nnUNetv2_train`` and
``nnUNetv2_predict`` before any preprocessing, so both commands are covered. Code that meets our scheme
name without registration (``nnUNetv2_preprocess`` on FOMO plans, a fresh interpreter) fails with nnU-Net's
``RuntimeError: Unable to locate class 'FomoPretrainingNormalization' for normalization``; it never falls back
to another normalisation. Nothing inside site-packages is modified on disk.
"""

from __future__ import annotations

from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Dict, Tuple, Type

from nnunetv2.preprocessing.normalization import default_normalization_schemes
from nnunetv2.preprocessing.normalization.default_normalization_schemes import ImageNormalization
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_ext.preprocessing.normalization import FomoPretrainingNormalization

#: Our normalisation schemes, exposed under their class names (the names the plans store).
SCHEMES: Tuple[Type[ImageNormalization], ...] = (FomoPretrainingNormalization,)


def register_with_nnunet() -> None:
    """Expose :data:`SCHEMES` to nnU-Net's by-name lookup here and in every worker it spawns. Idempotent."""
    for scheme in SCHEMES:
        existing = getattr(default_normalization_schemes, scheme.__name__, None)
        if existing is not None and existing is not scheme:
            raise RuntimeError(f"nnU-Net already has a {scheme.__name__!r} that is not ours ({existing!r}); "
                               "refusing to shadow it")
        setattr(default_normalization_schemes, scheme.__name__, scheme)
    ForkingPickler.register(ConfigurationManager, _reduce_registered)


def _reduce_registered(obj: Any) -> Tuple[Callable[..., Any], Tuple[type, Dict[str, Any]]]:
    """Pickle ``obj`` by its state, to be rebuilt by :func:`_rebuild_registered` (which registers first)."""
    return _rebuild_registered, (type(obj), obj.__dict__)


def _rebuild_registered(cls: type, state: Dict[str, Any]) -> Any:
    """Register our schemes in this (spawned) process, then restore the pickled object unchanged."""
    register_with_nnunet()
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj
