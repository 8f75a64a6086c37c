"""DVC stage macs: parameters and MACs of one 8 ms chunk (streaming, warm state) per model.

For every task in params `tasks`, at the paper's sizes and at the active profile's sizes:
small, medium and large models, the boosted small model (small + merge modules, device side,
hint given), the compression (remote) and the remote total (large + compression), per chunk and
per second (x 125), with the reduction boosted small vs medium next to the paper's figures. Output sections: "paper_sizes" and "profile_sizes" (the active profile).
Counting convention: kboost.complexity.CONVENTION (also written to the output).
"""
import argparse

from kboost import stage
from kboost.fsutil import write_json
from kboost.params import active_profile, load_params

PAPER_REDUCTION_MACS_PER_CHUNK = {"se": 1.01e6, "ss": 1.02e6, "tse": 2.00e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    parser.add_argument("--out", default="metrics/macs.json", help="output JSON (default: %(default)s)")
    args = parser.parse_args()

    def run() -> None:
        import torch

        from kboost.complexity import CHUNKS_PER_SECOND, CONVENTION, complexity_report
        from kboost.models import PAPER_SIZES, GridNetSize

        torch.set_num_threads(1)  # counts do not depend on threads; keeps the stage light
        params = load_params(args.params)
        profile = active_profile(params)
        delay, compression = int(params["delay"]), int(params["model"]["compression"])
        sizes = {
            "paper_sizes": dict(PAPER_SIZES),
            "profile_sizes": {name: GridNetSize.from_dict(cfg, f"profiles.{params['profile']}.models.{name}")
                                for name, cfg in profile["models"].items()},
        }
        reports = {scale: {task: complexity_report(task, scale_sizes, delay, compression)
                           for task in params["tasks"]}
                   for scale, scale_sizes in sizes.items()}
        write_json(args.out, {
            "delay": delay,
            "compression": compression,
            "profile": params["profile"],
            "chunks_per_second": CHUNKS_PER_SECOND,
            "convention": CONVENTION,
            "reports": reports,
            "reduction_macs_per_chunk": {scale: {task: rep["reduction_vs_medium"]["macs_per_chunk"]
                                                 for task, rep in by_task.items()}
                                         for scale, by_task in reports.items()},
            "paper_reduction_macs_per_chunk": {task: PAPER_REDUCTION_MACS_PER_CHUNK[task]
                                               for task in params["tasks"] if task in PAPER_REDUCTION_MACS_PER_CHUNK},
        })

    stage.run(run, "macs")


if __name__ == "__main__":
    main()
