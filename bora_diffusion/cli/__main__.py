"""`python -m bora_diffusion.cli ...`: the same as the `bora-diffusion` command (multi-process launchers use it)."""

import sys

from . import main

sys.exit(main())
