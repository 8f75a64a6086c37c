"""The DVCLive log of a training run (``metrics.json``, ``plots/metrics/*.tsv``), rewritten from
the run's history after every epoch, so a resumed run's log equals an uninterrupted one's (no
epoch logged twice or lost). Timings are kept out of the plots: they differ between runs and
would make logs differ."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

LOGGED = ("train_loss", "val_si_snri", "lr")  # the columns of a history row that are logged


class LiveLog:
    """The log in ``live_dir``; ``None``: no log (e.g. tests, benchmarks)."""

    def __init__(self, live_dir: str | os.PathLike | None):
        self.live_dir = Path(live_dir) if live_dir is not None else None

    def write(self, history: list[dict]) -> None:
        """Replace the log by one step per row of ``history`` (step = the row's epoch)."""
        if self.live_dir is None:
            return
        from dvclive import Live

        shutil.rmtree(self.live_dir, ignore_errors=True)
        with Live(str(self.live_dir), dvcyaml=None, save_dvc_exp=False, report=None) as live:
            for row in history:
                live.step = row["epoch"]
                for key in LOGGED:
                    live.log_metric(key, row[key])
                live.next_step()
