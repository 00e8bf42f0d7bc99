"""Where things are: the checkout and this run's log folder."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# One directory per run, so that two runs in one checkout never delete each other's logs.
LOG_DIR = ROOT / "test-logs" / f"run-{os.getpid()}"
GUNICORN = str(ROOT / ".venv" / "bin" / "gunicorn")
