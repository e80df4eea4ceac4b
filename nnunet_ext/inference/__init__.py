"""Prediction with fold ensembles (``fomo_predict``) and the FOMO25 challenge container entry point."""
