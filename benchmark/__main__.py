"""``python -m benchmark`` / ``python -m bitbench``: the command line (bitbench.cli)."""
import sys

from bitbench.cli import main

sys.exit(main())
