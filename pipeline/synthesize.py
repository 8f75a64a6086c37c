"""DVC stage synthesize@<task>: binaural mixtures of one task (se, ss or tse) for all splits.

Reads data/corpus/{speech,noise,responses}; writes data/mixtures/<task>/<split>/ with stems,
a manifest.csv recording every choice, and (TSE) the enrolment d-vectors.
"""
import argparse

import kboost.blas  # noqa: F401  (first: pins OpenBLAS's kernels before numpy loads)
from kboost import stage
from kboost.mixtures import synthesize_task
from kboost.params import active_profile, load_params
from kboost.tasks import NAMES as TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=TASKS, help="task to synthesise")
    parser.add_argument("--corpus", default="data/corpus", help="corpus directory (default: %(default)s)")
    parser.add_argument("--out", required=True, help="output directory, e.g. data/mixtures/se")
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    args = parser.parse_args()

    def run() -> None:
        params = load_params(args.params)
        synthesize_task(args.task, args.corpus, args.out, params, active_profile(params))

    stage.run(run, f"synthesize@{args.task}")


if __name__ == "__main__":
    main()
