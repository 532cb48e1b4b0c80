"""``python -m torch_rc.cli``."""

import sys

from torch_rc.cli import main

sys.exit(main())
