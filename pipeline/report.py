"""DVC stage report: the paper's tables and figures, regenerated from the metrics files.

Reads metrics/eval/<task>/<run>.json, metrics/macs.json, the DVCLive logs in metrics/train and
paper/reported.yaml; writes paper/tables/<name>.{md,tex} (jinja2 templates in paper/templates)
paper/figures/<name>.{png,pdf} and paper/index.html (the results page, with the audio examples of
the `examples` stage in paper/audio). A missing metrics file stops the stage with the name of the
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

        import json

        from kboost.fsutil import remove_temporaries_in
        from kboost.params import load_params

        from kboost.report import Study, all_tables, load_reported, render_figures, render_page, render_tables

        out = Path(args.out)
        for folder in (out, out / "tables", out / "figures"):  # leftovers of a killed earlier run
            remove_temporaries_in(folder)
        study = Study(load_params(args.params))
        reported = load_reported(out / "reported.yaml")
        tables = all_tables(study, reported)
        written = render_tables(tables, out / "templates", out / "tables")
        figures = render_figures(study, out / "figures")
        manifest = out / "audio" / "manifest.json"
        examples = json.loads(manifest.read_text()) if manifest.is_file() else None
        written += figures + [render_page(study, tables, figures, reported, out / "templates", out, examples)]
        logging.getLogger("report").info("wrote %d files under %s", len(written), out)

    stage.run(run, "report")


if __name__ == "__main__":
    main()
