"""DVC stages train_vanilla@<task>-<size>, train_boosted@<task>-<delay>, train_ablation@<P>-<delay> and
train_variable@<task> (one pair for every delay, the delay drawn per training clip).

Trains one model on the mixtures in --data (data/mixtures/<task>) with the authors' recipe (params `train`) at the active
profile's scale (params profiles.<profile>.train and .models). Writes to --out: best.pt (best
validation SI-SNRi), last.pt (resumable) and params.yaml (the resolved settings); DVCLive logs to
--live. A killed run resumes from last.pt when rerun. A boosted pair's large model starts from
--large (the trained vanilla large model of the same task), and its small model from --small
(the trained vanilla small model) when the profile's train.boosted_init is small.

Several processes (GPUs, or CPU cores): params profiles.<profile>.train.processes = N makes this
script run itself under torchrun (DistributedDataParallel, the batch split across processes);
starting it under torchrun by hand works too.
"""
import argparse
import sys

from kboost.tasks import NAMES as TASK_NAMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=TASK_NAMES)
    parser.add_argument("--model", required=True, choices=["small", "medium", "large", "boosted", "variable"],
                        help="variable: a boosted pair trained with the delay drawn per clip (params variable_delay)")
    parser.add_argument("--delay", type=int, help="boosted: hint delay in 8 ms chunks")
    parser.add_argument("--compression", type=int, help="boosted: compression factor P (default: params model.compression)")
    parser.add_argument("--large", help="boosted: the trained vanilla large checkpoint to start from")
    parser.add_argument("--small", help="boosted, with boosted_init small: the trained vanilla small checkpoint")
    parser.add_argument("--data", required=True, help="the task's mixtures, e.g. data/mixtures/ss")
    parser.add_argument("--out", required=True, help="checkpoint directory, e.g. data/models/ss/small")
    parser.add_argument("--live", help="DVCLive directory, e.g. metrics/train/ss/small")
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args()

    from kboost import stage

    def run() -> None:
        from kboost.distributed import exec_under_torchrun
        from kboost.experiment import train_from_params
        from kboost.params import active_profile, load_params

        processes = active_profile(load_params(args.params))["train"]["processes"]
        exec_under_torchrun(processes, __file__, sys.argv[1:])  # does not return when processes > 1

        train_from_params(args.params, args.task, args.model, args.data, args.out, args.live, delay=args.delay,
                          compression=args.compression, large_checkpoint=args.large, small_checkpoint=args.small,
                          progress=not args.no_progress)

    stage.run(run, f"train {args.task} {args.model}" + (f" delay {args.delay}" if args.delay is not None else ""))


if __name__ == "__main__":
    main()
