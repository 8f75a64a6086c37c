"""DVC stages score_mixtures@<task> and evaluate_*@...: test-split metrics of one model.

Reads the test split of --data; writes per-utterance rows to --rows (CSV) and a summary (means,
95% confidence half-widths, PESQ/STOI failure counts) to --summary (JSON). With --mixture it
scores the unprocessed mixtures (the reference point of SI-SDRi and of the tables).
Boosted pairs run chunk by chunk with their delay; vanilla models run whole clips (same output).
--hint-codec quantises a boosted pair's hints before sending (evaluation only: what a cheaper
link costs); the summary records the codec and the hint stream's bit rate. --delay runs a
variable-delay pair (trained with the delay drawn per clip) at one delay. --si-sdr-only skips
PESQ and STOI (the studies beyond the paper compare SI-SDRi alone; a third of their cost).
"""
import argparse

import kboost.blas  # noqa: F401  (first: pins OpenBLAS's kernels before numpy loads)
from kboost.hint_codec import CODECS
from kboost.tasks import NAMES as TASK_NAMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=TASK_NAMES)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="model checkpoint, e.g. data/models/ss/small/best.pt")
    what.add_argument("--mixture", action="store_true", help="score the mixtures themselves")
    parser.add_argument("--data", required=True, help="the task's mixtures, e.g. data/mixtures/ss")
    parser.add_argument("--rows", required=True, help="per-utterance scores to write, e.g. data/eval/ss/small.csv")
    parser.add_argument("--summary", required=True, help="summary JSON to write, e.g. metrics/eval/ss/small.json")
    parser.add_argument("--mixture-rows", metavar="CSV",
                        help="the mixtures' scores (score_mixtures), for the PESQ/STOI improvements of a model")
    parser.add_argument("--paired-with", metavar="CSV",
                        help="the rows of another run of the task (e.g. data/eval/ss/medium.csv): also compare "
                             "with it utterance by utterance (mean difference and its 95%% confidence half-width)")
    parser.add_argument("--hint-codec", choices=CODECS, default="float32",
                        help="boosted pairs: how hints are quantised before sending (default: %(default)s, as trained)")
    parser.add_argument("--delay", type=int, help="a variable-delay pair: the hint delay (chunks) to run it at")
    parser.add_argument("--si-sdr-only", action="store_true", help="a model: score SI-SDR(i) only, no PESQ / STOI")
    parser.add_argument("--run", help="run name in the summary, e.g. small or boosted-d6 (default: the "
                                      "checkpoint's directory name)")
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args()
    if args.mixture and args.si_sdr_only:
        parser.error("--si-sdr-only scores a model; the mixtures' own PESQ / STOI are the reference of every model")

    from pathlib import Path

    from kboost import stage

    run_name = "mixture" if args.mixture else (args.run or Path(args.checkpoint).parent.name)

    def run() -> None:
        from kboost.evaluation import evaluate_from_params

        evaluate_from_params(args.params, args.task, run_name, args.checkpoint, data_dir=args.data,
                             rows_path=args.rows, summary_path=args.summary, mixture_rows=args.mixture_rows,
                             paired_rows=args.paired_with, hint_codec=args.hint_codec, delay=args.delay,
                             perceptual=not args.si_sdr_only, progress=not args.no_progress)

    stage.run(run, f"evaluate {args.task} {run_name}")


if __name__ == "__main__":
    main()
