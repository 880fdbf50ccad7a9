"""``python -m provisioner COMMAND ...``: the ``wakegate project`` commands without the gateway CLI."""

import sys

from .cli import main

sys.exit(main())
