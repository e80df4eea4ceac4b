"""The folder ``nnUNet_extTrainer`` points at (see ``nnunet_ext.env``).

nnU-Net puts this folder on ``sys.path``, imports every module in it by its bare name and takes the first
attribute with the requested trainer name; afterwards it forgets the modules imported from here. Keep it to
the one re-exporting module, so the scan stays cheap and imports nothing else.
"""
