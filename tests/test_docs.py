"""The documentation site builds, its benchmark page is what the results give, and the front page stays one.

* `mkdocs build --strict` (mkdocs.yml: Material theme, mkdocstrings' API reference from the docstrings)
  passes: no broken link, no missing page, no docstring mkdocstrings cannot read.
* `docs/benchmarks.md` and the README's headline table are exactly what `benchmarks/render.py` makes of
  `benchmarks/results/*.json`: a benchmark re-run that was not rendered fails here.
* The README is a front page (at most 300 lines), and no page narrates times of day.

The code blocks of the docs run in `tests/test_readme.py`, with the README's.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

pytestmark = pytest.mark.backend_independent


def _render_module():
    spec = importlib.util.spec_from_file_location("benchmarks_render", ROOT / "benchmarks" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render_module()


def test_mkdocs_build_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-10000:]
    site = tmp_path / "site"
    for page in ("index.html", "benchmarks/index.html", "api/convnext_hub/index.html", "api/converters/index.html"):
        assert (site / page).exists(), page
    # The API reference was generated from the docstrings, and the charts were served from the results.
    assert 'id="convnext_hub.hub.load_pretrained"' in (site / "api/convnext_hub/index.html").read_text()
    for chart in (ROOT / "benchmarks" / "results").glob("*.png"):
        assert (site / "assets" / "benchmarks" / chart.name).exists(), chart.name


def test_benchmark_page_is_rendered_from_the_results():
    results = render.load_results()
    assert (DOCS / "benchmarks.md").read_text() == render.render_page(results), (
        "docs/benchmarks.md differs from benchmarks/results/*.json: run python benchmarks/render.py"
    )
    readme = (ROOT / "README.md").read_text()
    assert readme == render.readme_with_headline(readme, results), (
        "README.md's headline table differs from benchmarks/results/*.json: run python benchmarks/render.py"
    )
    page = render.render_page(results)
    missing = [name for name in results if f"- **Results:** `benchmarks/results/{name}.json`." not in page]
    assert not missing, f"results not on the benchmark page: {missing}"


def test_render_says_what_a_result_does_not_record(tmp_path):
    (tmp_path / "inference.json").write_text(json.dumps({"results": [{"model": "m", "backend": "jax", "ratio": 1.5}]}))
    (tmp_path / "future.json").write_text(json.dumps({"machine": {"date": "2026-12-01 10:00:00 UTC"}, "img_s": 12.5}))
    page = render.render_page(render.load_results(tmp_path))
    assert "- **Measured:** not recorded;" in page
    assert "- **Command:** not recorded." in page
    assert "| m | JAX | not recorded | not recorded | not recorded |" in page
    assert "## future" in page and "2026-12-01 10:00:00 UTC" in page and "| `img_s` | 12.5 |" in page


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; the manual belongs in docs/"


TIME_OF_DAY = re.compile(r"\b\d{1,2}:\d{2}(:\d{2})? ?UTC\b|\bsince the \d|\bwhat changed\b", re.IGNORECASE)


def test_no_dated_narration():
    """Figures carry their machine and date (the rendered benchmark page); prose narrates no times of day."""
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    problems = [
        f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
        for page in pages
        if page.name != "benchmarks.md"
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if TIME_OF_DAY.search(line)
    ]
    assert not problems, "\n".join(problems)
