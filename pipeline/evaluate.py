"""DVC stages score_mixtures@<task> and evaluate_*@...: test-split metrics of one model.

Writes per-utterance rows to data/eval/<task>/<run>.csv and a summary (means, 95% confidence
half-widths, PESQ/STOI failure counts) to metrics/eval/<task>/<run>.json. With --mixture it
scores the unprocessed mixtures (the reference point of SI-SDRi and of the tables).
Boosted pairs run chunk by chunk with their delay; vanilla models run whole clips (same output).
"""
import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=["se", "ss", "tse"])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="model checkpoint, e.g. data/models/ss/small/best.pt")
    what.add_argument("--mixture", action="store_true", help="score the mixtures themselves")
    parser.add_argument("--run", help="run name for the outputs, e.g. small or boosted-d6 (default: the "
                                      "checkpoint's directory name)")
    parser.add_argument("--paired-with", metavar="RUN",
                        help="also compare with RUN of the same task (e.g. medium) utterance by utterance: "
                             "mean difference and its 95%% confidence half-width in the summary")
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args()

    from pathlib import Path

    from kboost import stage

    run_name = "mixture" if args.mixture else (args.run or Path(args.checkpoint).parent.name)

    def run() -> None:
        from kboost.evaluation import evaluate_from_params
        from kboost.runs import eval_paths

        mixture_rows = None if args.mixture else str(eval_paths(args.task, "mixture")[0])
        evaluate_from_params(args.params, args.task, run_name, args.checkpoint, mixture_rows,
                             progress=not args.no_progress, paired_with=args.paired_with)

    stage.run(run, f"evaluate {args.task} {run_name}")


if __name__ == "__main__":
    main()
