"""``/app/predict.py`` of the FOMO25 challenge container; the work is done by ``nnunet_ext.inference.container``."""

import sys

from nnunet_ext.inference.container import main

if __name__ == "__main__":
    sys.exit(main())
