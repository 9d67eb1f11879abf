"""`python -m bench`: the latency x accuracy table of every backend and precision here (bench/table.py)."""

import sys

from bench.table import main

sys.exit(main())
