"""Data sources: real downloads (LibriSpeech, WHAM!, measured responses) and embedded generators.

All of them write the layout described in :mod:`kboost.sources.layout`.
"""
