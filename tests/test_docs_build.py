"""The documentation site builds with ``mkdocs build --strict`` (mkdocs-material, the API reference from the
docstrings by mkdocstrings), documents every public name, and references no asset outside the site.

Needs the optional extra ``docs``; skipped, with the reason, where it is missing, unless
BITBENCH_REQUIRE_DOCS=1 (CI), where it fails."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _find(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_mkdocs_build_strict(tmp_path):
    missing = [m for m in PACKAGES if not _find(m)]
    if missing:
        reason = f"mkdocs packages not installed: {', '.join(missing)} (pip install -e '.[docs]')"
        if os.environ.get("BITBENCH_REQUIRE_DOCS") == "1":
            pytest.fail(reason + " (BITBENCH_REQUIRE_DOCS=1)")
        pytest.skip(reason)
    out = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
                        "--site-dir", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING" not in r.stderr, r.stderr

    import bitbench

    api = (out / "api.html").read_text(encoding="utf-8")
    ids = set(re.findall(r'id="([^"]+)"', api))
    missing = [f"{m}.{n}" for n, m in sorted(bitbench._API.items()) if f"{m}.{n}" not in ids]
    assert not missing, f"not rendered on the API page: {missing}"
    assert "Runs a suite" in api  # a docstring's text (Harness), not only its heading
    for page in out.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:link|script|img)\b[^>]*?\b(?:href|src)="((?:https?:)?//[^"]+)"', text)
        assert not remote, f"{page.relative_to(out)} loads {remote}"
    # README.md's anchors into docs/formats.md are the site's heading ids too
    formats = (out / "formats.html").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for anchor in re.findall(r"\(docs/formats\.md#([^)]+)\)", readme):
        assert f'id="{anchor}"' in formats, anchor
