"""``python -m bidsport``: the ``bidsport`` command, for an environment whose scripts
folder is not on PATH."""

import sys

from bidsport.cli.run import main

sys.exit(main())
