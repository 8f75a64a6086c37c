"""Data sources: each prepares one corpus part (speech, noise, responses) in the layout of
:mod:`kboost.sources.layout`, from real downloads or from the embedded generators; ``prepare``
dispatches between them. (This file stays empty so that importing one source, e.g. the layout,
does not import the others.)"""
