"""``python -m lowlat.report``: see :mod:`lowlat.report.cli`."""

import sys

from lowlat.report.cli import main

sys.exit(main())
