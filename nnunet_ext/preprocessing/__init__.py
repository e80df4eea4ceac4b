"""FOMO plans, the pretraining intensity normalisation and ``fomo_plan_and_preprocess``.

Import :func:`nnunet_ext.preprocessing.registration.register_with_nnunet` before handing FOMO plans to
nnU-Net code that preprocesses images (see that module for why).
"""
