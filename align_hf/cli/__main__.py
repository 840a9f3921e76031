"""``python -m align_hf.cli`` (e.g. under ``torchrun``) is ``align-hf``."""

import sys

from align_hf.cli import console_main

sys.exit(console_main())
