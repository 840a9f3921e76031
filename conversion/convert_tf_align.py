#!/usr/bin/env python
"""Entry point: see :mod:`align_hf.conversion.tf_align` (also ``align-hf convert``)."""

import sys

from align_hf.conversion.tf_align import main

if __name__ == "__main__":
    sys.exit(main())
