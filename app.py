"""Serve the bora-diffusion web app: `python app.py [--host H --port P --auth user:password --base B --data D]`."""

import sys

from bora_diffusion.app import main

if __name__ == "__main__":
    sys.exit(main())
