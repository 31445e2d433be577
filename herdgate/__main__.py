from __future__ import annotations

import sys

from herdgate.cli import main

sys.exit(main())
