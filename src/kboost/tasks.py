"""The stems a task's mixtures are made of (torch-free: synthesis writes them, the dataset reads
them). Talkers come first among the sources; the targets are what a model must output."""
from __future__ import annotations

TALKERS = {"se": ("target",), "ss": ("source1", "source2"), "tse": ("target", "interferer")}
TARGETS = {"se": ("target",), "ss": ("source1", "source2"), "tse": ("target",)}
STEMS = {task: ("mixture",) + talkers + ("noise",) for task, talkers in TALKERS.items()}
