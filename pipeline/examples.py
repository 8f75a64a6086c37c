"""DVC stage examples: audio examples for the results page (paper/audio, DVC-cached).

One test mixture per task (--index) through every trained vanilla model and boosted pair
(streamed with its delay): paper/audio/<task>/{mixture,target-s<k>,<run>-s<k>}.flac and
paper/audio/manifest.json.
"""
import argparse

import kboost.blas  # noqa: F401  (first: pins OpenBLAS's kernels before numpy loads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    parser.add_argument("--data", default="data/mixtures", help="mixtures, one folder per task (default: %(default)s)")
    parser.add_argument("--models", default="data/models", help="trained models, <task>/<run>/best.pt "
                                                                "(default: %(default)s)")
    parser.add_argument("--out", default="paper/audio", help="output directory (default: %(default)s)")
    parser.add_argument("--index", type=int, default=0, help="test mixture to render (default: %(default)s)")
    args = parser.parse_args()

    from kboost import stage

    def run() -> None:
        from kboost.examples import render_examples
        from kboost.params import load_params

        render_examples(load_params(args.params), args.out, args.index, data_root=args.data, models_root=args.models)

    stage.run(run, "examples")


if __name__ == "__main__":
    main()
