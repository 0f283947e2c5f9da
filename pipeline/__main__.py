"""``python -m pipeline`` is the ``motion-pipeline`` command."""

import sys

from pipeline.cli import main

sys.exit(main())
