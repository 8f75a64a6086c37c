"""Entry-point wrapper for the stage scripts in pipeline/.

User-facing problems (bad params, unusable input files, failed downloads) end the stage with one
clear line and exit status 2; set KBOOST_DEBUG=1 to see the traceback. Anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable

from .logs import setup_logging


def _user_errors() -> tuple[type[BaseException], ...]:
    from .audio import AudioError
    from .mixtures import SynthesisError
    from .models.checkpoint import CheckpointError
    from .models.gridnet import ModelInputError
    from .params import ParamsError
    from .sources.layout import CorpusError

    errors: list[type[BaseException]] = [AudioError, SynthesisError, ParamsError, CorpusError,
                                         CheckpointError, ModelInputError]
    try:
        from .download import DownloadError
        errors.append(DownloadError)
    except ImportError:  # pragma: no cover - the downloader is optional for the embedded default
        pass
    return tuple(errors)


def run(main: Callable[[], None], name: str) -> None:
    setup_logging()
    log = logging.getLogger(name)
    started = time.perf_counter()
    try:
        main()
    except _user_errors() as exc:
        if os.environ.get("KBOOST_DEBUG"):
            raise
        print(f"error: {name}: {exc}", file=sys.stderr)
        sys.exit(2)
    log.info("%s finished in %.1f s", name, time.perf_counter() - started)
