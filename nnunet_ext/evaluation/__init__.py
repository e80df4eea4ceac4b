"""Evaluation on top of the metrics (``nnunet_ext.metrics``): test-set evaluation of folds and ensembles
(``fomo_evaluate``), model selection (``fomo_find_best_configuration``), report tables and figures.

Each command's module is imported on its own (``nnunet_ext.evaluation.evaluate``, ``.model_selection``,
``.plots``, ``.report``), so that reading a report table does not import matplotlib or nnU-Net's predictor.
"""
