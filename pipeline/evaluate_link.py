"""DVC stage evaluate_link@<task>: the headline pair (boosted-d<delay>) and the variable-delay pair
(boosted-var) with their hints sent over a link with jitter and loss (params link).

Writes per-utterance SI-SDRi rows to --rows (CSV: pair, sweep, loss rate, jitter) and the means
per pair and condition, with the vanilla small and medium models' floor lines, to --summary.
"""
import argparse

import kboost.blas  # noqa: F401  (first: pins OpenBLAS's kernels before numpy loads)
from kboost.tasks import NAMES as TASK_NAMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=TASK_NAMES)
    parser.add_argument("--data", required=True, help="the task's mixtures, e.g. data/mixtures/se")
    parser.add_argument("--fixed", required=True, help="the headline pair, e.g. data/models/se/boosted-d6/best.pt")
    parser.add_argument("--variable", required=True, help="the variable-delay pair, e.g. data/models/se/boosted-var/best.pt")
    parser.add_argument("--small-rows", required=True, help="vanilla small rows (floor line), e.g. data/eval/se/small.csv")
    parser.add_argument("--medium-rows", required=True, help="vanilla medium rows (floor line)")
    parser.add_argument("--fixed-rows", required=True, help="the headline pair's own evaluation rows (engine check)")
    parser.add_argument("--rows", required=True, help="per-utterance rows to write, e.g. data/eval/se/link.csv")
    parser.add_argument("--summary", required=True, help="summary JSON to write, e.g. metrics/eval/se/link.json")
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args()

    from kboost import stage

    def run() -> None:
        from kboost.link_study import evaluate_link_from_params

        evaluate_link_from_params(args.params, args.task, args.data, args.fixed, args.variable,
                                  small_rows=args.small_rows, medium_rows=args.medium_rows, fixed_rows=args.fixed_rows,
                                  rows_path=args.rows, summary_path=args.summary, progress=not args.no_progress)

    stage.run(run, f"evaluate the link study of {args.task}")


if __name__ == "__main__":
    main()
