"""tools/offline_plots_template.py: `dvc plots show` offline, Vega inlined from an npm registry
(a local server stands in for it)."""
import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import offline_plots_template as tool  # noqa: E402

# Stand-ins for the three libraries: vegaEmbed marks the div it was given the spec for.
FAKE = {"vega": "window.vegaLoaded = true; var s = '</script>';",
        "vega-lite": "window.vegaLiteLoaded = true;",
        "vega-embed": "window.vegaEmbed = (sel, spec) => document.querySelector(sel)"
                      ".setAttribute('data-drawn', window.vegaLoaded && window.vegaLiteLoaded && spec ? 'yes' : 'no');"}


def _publish(server, corrupt=None):
    """Registry metadata and tarballs for every package of the tool, as npm serves them."""
    for name, version, member in tool.PACKAGES:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            code = FAKE[name].encode()
            info = tarfile.TarInfo(f"package/{member}")
            info.size = len(code)
            archive.addfile(info, io.BytesIO(code))
        data = buffer.getvalue()
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        (server.root / name).mkdir(exist_ok=True)
        (server.root / name / f"{name}-{version}.tgz").write_bytes(data + (b"x" if name == corrupt else b""))
        meta = {"dist": {"tarball": server.url(f"{name}/{name}-{version}.tgz"), "integrity": integrity}}
        (server.root / name / version).write_text(json.dumps(meta))


def test_dvc_plots_page_draws_offline_from_the_template(http_server, tmp_path):
    from browser import dump_dom

    _publish(http_server)
    template = tmp_path / "plots-offline.html"
    assert tool.main(["--out", str(template), "--registry", http_server.url().rstrip("/")]) == 0
    text = template.read_text()
    assert "{plot_divs}" in text and "{scripts}" not in text and "http" not in text
    assert text.count("</script>") == 3  # the library's own "</script>" string does not end its tag
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "curve.tsv").write_text("step\tval\n1\t0.5\n2\t1.5\n")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "config", "--local", "plots.html_template", str(template)], cwd=repo, check=True)
    subprocess.run(["dvc", "plots", "show", "curve.tsv", "-o", "out"], cwd=repo, check=True, capture_output=True)
    page = (repo / "out" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vegaEmbed(" in page
    assert 'data-drawn="yes"' in dump_dom(repo / "out" / "index.html", tmp_path / "profile")


def test_a_tarball_that_fails_its_integrity_writes_nothing(http_server, tmp_path, capsys):
    _publish(http_server, corrupt="vega-lite")
    template = tmp_path / "plots-offline.html"
    assert tool.main(["--out", str(template), "--registry", http_server.url().rstrip("/")]) == 1
    err = capsys.readouterr().err
    assert "vega-lite@5.2.0" in err and "sha512 integrity" in err and not template.exists()
    assert list(tmp_path.iterdir()) == []
