"""`python -m pipeline` is the same as the `wsi-mil` command (used by rules run under conda envs)."""

import sys

from pipeline.cli import main

sys.exit(main())
