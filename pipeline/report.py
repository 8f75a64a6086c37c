"""DVC stage report: the paper's tables and figures, regenerated from the metrics files.

Reads metrics/eval/<task>/<run>.json, metrics/macs.json, the DVCLive logs in metrics/train and
paper/reported.yaml; writes paper/tables/<name>.{md,tex} (jinja2 templates in paper/templates)
and paper/figures/<name>.{png,pdf}. A missing metrics file stops the stage with the name of the
stage that writes it.
"""
import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    parser.add_argument("--out", default="paper", help="output directory (default: %(default)s)")
    args = parser.parse_args()

    from pathlib import Path

    from kboost import stage

    def run() -> None:
        import logging

        from kboost.params import load_params
        from kboost.report import Study, all_tables, load_reported, render_figures, render_tables

        out = Path(args.out)
        study = Study(load_params(args.params))
        tables = all_tables(study, load_reported(out / "reported.yaml"))
        written = render_tables(tables, out / "templates", out / "tables")
        written += render_figures(study, out / "figures")
        logging.getLogger("report").info("wrote %d files under %s", len(written), out)

    stage.run(run, "report")


if __name__ == "__main__":
    main()
