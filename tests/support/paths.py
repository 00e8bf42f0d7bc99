"""Where things are: the checkout, this run's log folder, and scratch folders for the helpers
that are not fixtures (they cannot ask for tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# One directory per run, so that two runs in one checkout never delete each other's logs.
LOG_DIR = ROOT / "test-logs" / f"run-{os.getpid()}"
GUNICORN = str(ROOT / ".venv" / "bin" / "gunicorn")


class Scratch:
    """New folders under pytest's tmp dir of the run, for make_settings and the gunicorn portals;
    conftest.py hands over tmp_path_factory when the session starts."""

    factory: pytest.TempPathFactory | None = None

    def folder(self, prefix: str) -> Path:
        if self.factory is None:
            raise RuntimeError("scratch folders are made only during a pytest session")
        return self.factory.mktemp(prefix)


SCRATCH = Scratch()
