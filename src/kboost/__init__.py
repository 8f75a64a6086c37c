"""kboost: reproduction pipeline for "Knowledge boosting during low-latency inference"."""
__version__ = "0.1.0"
