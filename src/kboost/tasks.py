"""The three tasks of the study, each described once (torch-free: synthesis, params checks, models,
training, evaluation, the report and the command line all read it from here)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """What a task is made of and what a model of it must do.

    ``talkers`` are the speech stems of a mixture (first among its sources), ``targets`` the stems a
    model must output, one binaural pair each."""

    name: str                      # "se", the key in params.yaml, paths and command lines
    label: str                     # "SE", as tables and figures print it
    title: str                     # "speech enhancement"
    talkers: tuple[str, ...]
    targets: tuple[str, ...]
    permutation_invariant: bool    # targets in any order: the loss scores the best permutation
    needs_embedding: bool          # conditioned on the target talker's d-vector

    @property
    def stems(self) -> tuple[str, ...]:
        """Every file of a mixture: the mixture, its talkers' images, the noise."""
        return ("mixture",) + self.talkers + ("noise",)

    @property
    def sources(self) -> int:
        """Sources a model outputs (each binaural)."""
        return len(self.targets)

    @property
    def output_channels(self) -> int:
        """Channels of a model's output: two ears per source."""
        return 2 * self.sources


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("se", "SE", "speech enhancement", ("target",), ("target",),
         permutation_invariant=False, needs_embedding=False),
    Task("ss", "SS", "speech separation", ("source1", "source2"), ("source1", "source2"),
         permutation_invariant=True, needs_embedding=False),
    Task("tse", "TSE", "target speech extraction", ("target", "interferer"), ("target",),
         permutation_invariant=False, needs_embedding=True),
)}
NAMES: tuple[str, ...] = tuple(TASKS)   # the order seeds synthesis: never reorder


def get_task(name: str) -> Task:
    """The task called ``name``; a ValueError naming the allowed ones otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(NAMES)}") from None
