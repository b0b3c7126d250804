"""``python -m lrpfx``: the command line (see ``lrpfx.cli``)."""

import sys

from lrpfx.cli import main

sys.exit(main())
