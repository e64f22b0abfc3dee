"""MkDocs hook: the benchmark charts are served from `benchmarks/results/`, where the benchmarks write them.

The pages link them as `assets/benchmarks/<name>.png`; the files are added to the site at build
time, so the charts are not kept twice in the repository.
"""

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def on_files(files, config):
    for chart in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"assets/benchmarks/{chart.name}", abs_src_path=str(chart)))
    return files
