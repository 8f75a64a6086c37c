"""DVC stage get_data@<part>: prepare one corpus part (speech, noise or binaural responses).

The profile's `data.sources.<part>` picks the embedded generator (offline default) or the real
corpus (LibriSpeech, WHAM!, measured responses), which is downloaded with checksums.
"""
import argparse

import kboost.blas  # noqa: F401  (first: pins OpenBLAS's kernels before numpy loads)
from kboost import stage
from kboost.params import load_params
from kboost.sources.prepare import PARTS, prepare_part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", required=True, choices=PARTS, help="corpus part to prepare")
    parser.add_argument("--out", required=True, help="output directory, e.g. data/corpus/speech")
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    args = parser.parse_args()
    stage.run(lambda: prepare_part(args.part, load_params(args.params), args.out), f"get_data@{args.part}")


if __name__ == "__main__":
    main()
