"""Logging set-up shared by the stage scripts."""
from __future__ import annotations

import logging
import os
import warnings


def setup_logging() -> None:
    level = os.environ.get("KBOOST_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # webrtcvad (through Resemblyzer) imports pkg_resources, which warns on every import.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
