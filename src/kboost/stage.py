"""Entry-point wrapper for the stage scripts in pipeline/.

User-facing problems (bad params, unusable input files, failed downloads) end the stage with one
clear line and exit status 2; set KBOOST_DEBUG=1 to see the traceback. Anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Callable, Iterator

from .errors import KboostError
from .logs import setup_logging


@contextlib.contextmanager
def exit_on_user_error(prefix: str = "", extra: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn a user-facing error into ``error: <prefix><message>`` on one line and exit status 2."""
    try:
        yield
    except (KboostError,) + tuple(extra) as exc:
        if os.environ.get("KBOOST_DEBUG"):
            raise
        message = " ".join(str(exc).split())
        print(f"error: {prefix}{message}", file=sys.stderr)
        sys.exit(2)


def run(main: Callable[[], None], name: str) -> None:
    setup_logging()
    log = logging.getLogger(name)
    started = time.perf_counter()
    with exit_on_user_error(f"{name}: "):
        main()
    log.info("%s finished in %.1f s", name, time.perf_counter() - started)
