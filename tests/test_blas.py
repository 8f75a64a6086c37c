"""kboost.blas: the data stages get the same BLAS results whatever kernels the CPU would pick."""
import json
import os
import subprocess
import sys

import pytest

# OpenBLAS's kernel families are x86-64 names; elsewhere kboost.blas pins nothing.
x86_64_only = pytest.mark.skipif(os.uname().machine not in ("x86_64", "amd64"),
                                 reason="OpenBLAS kernel families are x86-64 names")

# A float32 and a float64 product big enough for OpenBLAS's blocked kernels (their rounding is
# what differs between kernel families), then the d-vector of a fixed signal, which goes through
# librosa's mel filterbank product: the computation whose last bits moved between two machines.
PROBE = """
import hashlib, json, os, sys
if sys.argv[1] == "pinned":
    import kboost.blas
import numpy as np
from kboost.speaker import embed_utterance
r = np.random.default_rng(0)
a, b = r.standard_normal((257, 513)), r.standard_normal((513, 301))
t = np.arange(16000 * 2) / 16000
voice = (np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * r.standard_normal(t.size))
digest = lambda x: hashlib.md5(np.ascontiguousarray(x).tobytes()).hexdigest()
print(json.dumps({"coretype": os.environ.get("OPENBLAS_CORETYPE"),
                  "f32": digest(a.astype(np.float32) @ b.astype(np.float32)), "f64": digest(a @ b),
                  "dvector": digest(embed_utterance(voice.astype(np.float32)))}))
"""


def _probe(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**os.environ, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@x86_64_only
def test_pinned_results_do_not_depend_on_the_kernels_the_cpu_would_pick():
    # SkylakeX (AVX-512) where the CPU has it, else OpenBLAS falls back: either way the pin wins.
    results = [_probe("pinned", OPENBLAS_CORETYPE=core) for core in ("SkylakeX", "Zen", "Haswell")]
    assert {r["coretype"] for r in results} == {"Haswell"}
    assert all(r == results[0] for r in results)


def test_native_keeps_openblas_own_choice():
    result = _probe("pinned", KBOOST_OPENBLAS_CORETYPE="native", OPENBLAS_CORETYPE="Zen")
    assert result["coretype"] == "Zen"


@x86_64_only
def test_importing_numpy_first_is_reported():
    code = "import numpy, warnings\nwarnings.simplefilter('error')\nimport kboost.blas"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "numpy was imported before kboost.blas" in out.stderr
