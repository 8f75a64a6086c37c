"""One BLAS kernel family on every x86-64 CPU, so the data stages give the same bytes everywhere.

OpenBLAS (numpy's and scipy's BLAS) picks its kernels for the CPU it loads on: AVX-512 kernels
on one machine, AVX2 on another, and the two round sums differently. Between two such machines
the simulated room responses, the Resemblyzer d-vectors and the compiled streaming engine's
outputs differed in their last bits (the mixtures' 16-bit audio did not), and TSE training
amplified the d-vector difference into other models (boosted d0: 2.0 against 0.9 dB validation
SI-SNRi). The Haswell (AVX2) kernels run on every x86-64 CPU this project targets, so every
stage that computes with numpy's BLAS asks for them.

Import this module before anything imports numpy: OpenBLAS reads OPENBLAS_CORETYPE once, when it
loads. ``KBOOST_OPENBLAS_CORETYPE`` names another family (``native`` keeps OpenBLAS's own pick).
"""
from __future__ import annotations

import os
import platform
import sys
import warnings

CORETYPE = "Haswell"
_X86_64 = ("x86_64", "amd64")


def pin_kernels() -> str | None:
    """Set OPENBLAS_CORETYPE for this process and its workers; return the family, or None if unpinned."""
    wanted = os.environ.get("KBOOST_OPENBLAS_CORETYPE", CORETYPE)
    if wanted == "native" or platform.machine().lower() not in _X86_64:
        return None
    if "numpy" in sys.modules and os.environ.get("OPENBLAS_CORETYPE") != wanted:
        warnings.warn(f"numpy was imported before kboost.blas: OpenBLAS keeps its own kernels, not {wanted}; "
                      "results may differ in the last bits between CPUs", RuntimeWarning, stacklevel=2)
    os.environ["OPENBLAS_CORETYPE"] = wanted
    return wanted


PINNED = pin_kernels()
