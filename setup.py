"""Build hook for the man page (everything else is in pyproject.toml).

argparse-manpage's ``build_manpages`` command (see ``[tool.setuptools.cmdclass]``) imports
``bidsport.cli.parser`` while the wheel is built; the parser needs nothing but the standard
library and ``bidsport.__version__``, so putting ``src/`` on ``sys.path`` is enough.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from setuptools import setup

setup()
