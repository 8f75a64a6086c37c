"""Models of the paper: causal TF-GridNet (small / medium / large) and the boosted pair."""
from .boosting import BoostedPair, Compression, MergeModule
from .frontend import HOP, LOOKAHEAD, N_FREQS, SAMPLE_RATE
from .gridnet import PAPER_SIZES, GridNetSize, ModelInputError, TFGridNet


def count_parameters(*modules) -> int:
    """Trainable parameters of one or more modules."""
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


__all__ = ["BoostedPair", "Compression", "MergeModule", "HOP", "LOOKAHEAD", "N_FREQS", "SAMPLE_RATE",
           "PAPER_SIZES", "GridNetSize", "ModelInputError", "TFGridNet", "count_parameters"]
