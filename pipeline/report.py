"""DVC stage report: the paper's tables and figures, regenerated from the metrics files.

Reads the evaluation summaries (--eval, <task>/<run>.json), the DVCLive logs (--train), the MAC
counts (--macs), the paper's figures (--reported) and the audio examples (--audio, from the
`examples` stage); writes <out>/tables/<name>.{md,tex} (jinja2 templates in --templates),
<out>/figures/<name>.{png,pdf}, <out>/index.html (the results page) and, under --results, one
small JSON per run with its headline numbers (what `dvc metrics show` lists). A missing metrics
file stops the stage with the name of the stage that writes it.
"""
import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    parser.add_argument("--eval", default="metrics/eval", help="evaluation summaries (default: %(default)s)")
    parser.add_argument("--train", default="metrics/train", help="DVCLive logs (default: %(default)s)")
    parser.add_argument("--macs", default="metrics/macs.json", help="MAC counts (default: %(default)s)")
    parser.add_argument("--reported", default="paper/reported.yaml", help="the paper's figures (default: %(default)s)")
    parser.add_argument("--templates", default="paper/templates", help="jinja2 templates (default: %(default)s)")
    parser.add_argument("--audio", default="paper/audio", help="audio examples (default: %(default)s)")
    parser.add_argument("--out", default="paper", help="tables, figures and index.html go here (default: %(default)s)")
    parser.add_argument("--results", default="metrics/results",
                        help="per-run headline numbers, <task>/<run>.json (default: %(default)s)")
    args = parser.parse_args()

    from pathlib import Path

    from kboost import stage

    def run() -> None:
        import json
        import logging

        from kboost.fsutil import remove_temporaries_in
        from kboost.params import load_params
        from kboost.report import (Study, all_tables, load_reported, render_figures, render_page, render_tables,
                                   results_view, write_results)

        out = Path(args.out)
        for folder in (out, out / "tables", out / "figures"):  # leftovers of a killed earlier run
            remove_temporaries_in(folder)
        study = Study(load_params(args.params), eval_dir=Path(args.eval), train_dir=Path(args.train),
                      macs_path=Path(args.macs))
        reported = load_reported(Path(args.reported))
        tables = all_tables(study, reported)
        templates = Path(args.templates)
        written = render_tables(tables, templates, out / "tables")
        figures = render_figures(study, out / "figures")
        manifest = Path(args.audio) / "manifest.json"
        examples = json.loads(manifest.read_text()) if manifest.is_file() else None
        written += figures + [render_page(study, tables, figures, reported, templates, out, examples)]
        written += write_results(results_view(study, reported), Path(args.results))
        logging.getLogger("report").info("wrote %d files under %s and %s", len(written), out, args.results)

    stage.run(run, "report")


if __name__ == "__main__":
    main()
