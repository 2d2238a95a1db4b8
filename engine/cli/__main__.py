"""``python -m engine.cli``: the same as the ``arbiter`` command."""

import sys

from engine.cli.app import main

sys.exit(main())
