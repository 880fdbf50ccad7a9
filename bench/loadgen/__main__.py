"""``python -m bench.loadgen rate|burst|stream|serve|watch [flags]``."""

import sys

from bench.loadgen.cli import main

sys.exit(main())
