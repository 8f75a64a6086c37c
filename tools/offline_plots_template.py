"""Write a `dvc plots show` HTML template with Vega inlined, so the plots page works offline.

    python tools/offline_plots_template.py --out .dvc/plots-offline.html
    dvc config --local plots.html_template plots-offline.html     # (`make setup` does both)

DVC's default plots page loads vega, vega-lite and vega-embed from a CDN, so offline it is blank.
This fetches the same releases from the npm registry (checking each tarball against the
registry's sha512 integrity), and writes a template with the three scripts inlined and DVC's
placeholders ({plot_divs}, {refresh_tag}); DVC's own CDN <script> tags ({scripts}) are left out.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

from kboost.fsutil import atomic_file

REGISTRY = "https://registry.npmjs.org"
# The releases dvc-render's default page loads (dvc_render/vega.py), and the file each ships.
PACKAGES = (("vega", "5.20.2", "build/vega.min.js"),
            ("vega-lite", "5.2.0", "build/vega-lite.min.js"),
            ("vega-embed", "6.18.2", "build/vega-embed.min.js"))

PAGE = """<!DOCTYPE html>
<html>
<head>
  {{refresh_tag}}
  <meta charset="utf-8">
  <title>DVC plots (offline)</title>
  <!-- {names}: inlined from the npm registry by tools/offline_plots_template.py -->
{scripts}
  <style> table {{ border-spacing: 15px; }} </style>
</head>
<body>
  {{plot_divs}}
</body>
</html>
"""


class TemplateError(RuntimeError):
    pass


def _get(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except OSError as exc:
        raise TemplateError(f"cannot fetch {url}: {exc}") from exc


def fetch_script(registry: str, name: str, version: str, member: str, timeout: float = 60.0) -> str:
    """The file ``member`` of the npm package ``name@version``, integrity-checked."""
    meta = json.loads(_get(f"{registry}/{name}/{version}", timeout))
    dist = meta.get("dist", {})
    tarball, integrity = dist.get("tarball"), dist.get("integrity", "")
    if not tarball or not integrity.startswith("sha512-"):
        raise TemplateError(f"{name}@{version}: the registry gives no tarball with a sha512 integrity")
    data = _get(tarball, timeout)
    if base64.b64encode(hashlib.sha512(data).digest()).decode() != integrity[len("sha512-"):]:
        raise TemplateError(f"{name}@{version}: {tarball} does not match the registry's sha512 integrity")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        try:
            return archive.extractfile(f"package/{member}").read().decode("utf-8")
        except (KeyError, AttributeError) as exc:
            raise TemplateError(f"{name}@{version}: no {member} in {tarball}") from exc


def build_template(registry: str = REGISTRY) -> str:
    scripts = []
    for name, version, member in PACKAGES:
        code = fetch_script(registry, name, version, member)
        # Inline scripts end at the first "</script": keep the code's own strings from closing the tag.
        code = code.replace("</script", "<\\/script")
        scripts.append(f"  <script>\n{code}\n  </script>")
    names = ", ".join(f"{name} {version}" for name, version, _ in PACKAGES)
    return PAGE.format(names=names, scripts="\n".join(scripts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".dvc/plots-offline.html"),
                        help="template to write (default: %(default)s)")
    parser.add_argument("--registry", default=REGISTRY, help="npm registry (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        page = build_template(args.registry.rstrip("/"))
    except TemplateError as exc:
        print(f"offline_plots_template: {exc}", file=sys.stderr)
        return 1
    with atomic_file(args.out) as tmp:  # never a half-written template
        tmp.write_text(page, encoding="utf-8")
    print(f"wrote {args.out} ({len(page) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
