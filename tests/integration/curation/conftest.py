"""Curation tests import the benchmark's generator and scorer (bench/ is not an installed package)."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
