"""`python -m pipelines` runs the `vaeaug` CLI."""

import sys

from pipelines.cli import main

sys.exit(main())
