"""``python -m axolotl_savefix plan CONFIG.yml``."""

import sys

from .cli import main

sys.exit(main())
