"""Runs the whole suite on TensorFlow, and the backend-dependent tests on JAX and torch.

    python -m tests            # everything, as CI does
    python -m tests --jobs=1   # one pytest process at a time (default: two, on machines with two cores)
    python -m tests -x -k atto # other arguments go to every pytest run

Keras fixes its backend at import, so each backend gets its own pytest processes. On TensorFlow
every test module runs in a process of its own, and the export and keras-hub tests do on JAX and
torch too: what TensorFlow keeps of the models a module builds added up to more than the 24 GB of
the test machine when the whole suite shared one process.

Two processes run side by side: a pytest process keeps about one core busy on average (imports,
model building and conversion are single-threaded), so a second one uses the CI machine's other
core. Their memory is bounded by the measured peaks in `PEAK_GIB`; each process's output is
printed whole when it ends, with its time and peak memory.
"""

import glob
import os
import re
import subprocess
import sys
import tempfile
import time

# Modules whose results depend on the Keras backend; the rest run once, on TensorFlow. On JAX and torch they
# run in two processes per backend, the model numerics and the workflows: each builds up less memory than
# one process of both, and four processes of about equal length keep two lanes busy.
BACKEND_GROUPS = {
    "models": [
        "tests/test_layers.py",
        "tests/test_models.py",
        "tests/test_fast_path.py",
        "tests/test_training.py",
        "tests/test_equivalence.py",
        "tests/test_depthwise_formulations.py",
        "tests/test_timm_features.py",  # forward_intermediates, output_stride, channels_first, remat against timm
    ],
    "workflows": [
        "tests/test_preprocessing.py",
        "tests/test_finetune.py",
        "tests/test_finetune_folder.py",  # the digits accuracy and resume equality differ by backend
        "tests/test_finetune_recipe.py",  # the layer-decay optimizer and EMA take each backend's update path
        "tests/test_half_precision.py",  # float16 / bfloat16 training and inference on each backend's kernels
        "tests/test_cache_integrity.py",  # every backend keeps the entry's mapped pages as its weights
        "tests/test_hub.py",  # first and cached loads differ by backend in what a model keeps
        "tests/test_keras_hub_harness.py",  # keras-hub's own TestCase checks, channels_first on JAX and torch
    ],
}
BACKEND_MODULES = [m for group in BACKEND_GROUPS.values() for m in group] + [
    "tests/test_keras_hub.py",
    "tests/test_export.py",
]


# Modules that get a pytest process of their own (per backend).
ISOLATED_MODULES = ["tests/test_export.py", "tests/test_keras_hub.py"]

# On TensorFlow, modules that build few or no models share one process: each process pays about
# 9 s of CPU to import torch, timm and TensorFlow, and these keep little memory.
SHARED_ON_TENSORFLOW = [
    "tests/test_arguments.py",
    "tests/test_cache_integrity.py",
    "tests/test_checkpoints.py",
    "tests/test_depthwise_formulations.py",
    "tests/test_distribution.py",
    "tests/test_docs.py",
    "tests/test_fast_path.py",
    "tests/test_faults_concurrent.py",
    "tests/test_faults_disk.py",
    "tests/test_faults_sigkill.py",
    "tests/test_faults_version.py",
    "tests/test_fuzz.py",
    "tests/test_heads.py",
    "tests/test_hub_server.py",
    "tests/test_import_layers.py",
    "tests/test_keras_compat.py",
    "tests/test_keras_files.py",
    "tests/test_layers.py",
    "tests/test_layouts.py",
    "tests/test_lint.py",
    "tests/test_preprocessing.py",
    "tests/test_readers.py",
    "tests/test_source_integrity.py",
    "tests/test_surface.py",
]


# Peak resident memory (GiB) a process may reach, measured on the CI machine kind (printed after each
# run, as `peak`): processes run side by side only while the sum of their peaks fits `MEMORY_BUDGET`.
# A process not listed is assumed to need `DEFAULT_PEAK`.
PEAK_GIB = {
    "tensorflow tests/test_equivalence.py": 14,  # converts convnext_xxlarge and convnextv2_huge
    "tensorflow tests/test_models.py": 11,
    "jax models": 15,  # measured 15.3 GiB beside another process (2026-12-05)
    "torch models": 7,
    "jax workflows": 7,
    "torch workflows": 4,
    "jax tests/test_keras_hub.py": 7,
    "torch tests/test_keras_hub.py": 6,
    "tensorflow tests/test_keras_hub.py": 6,
}
DEFAULT_PEAK = 4

# Each process lists its slowest tests (pytest's --durations); the suite's slowest of them are printed at the end.
DURATIONS = 20
DURATION_LINE = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)$", re.MULTILINE)
MEMORY_BUDGET = 0.8  # of the machine's memory

# Processes that take longest go first, so that two lanes end together; from the CI machine's durations.
LONGEST_FIRST = [
    "jax workflows",
    "tensorflow tests/test_readme.py",
    "tensorflow (shared process)",
    "jax models",
    "torch models",
    "jax tests/test_keras_hub.py",
    "tensorflow tests/test_equivalence.py",
    "tensorflow tests/test_export.py",
    "torch workflows",
    "tensorflow tests/test_training.py",
    "tensorflow tests/test_keras_hub.py",
    "tensorflow tests/test_models.py",
]


def _runs():
    """`[(label, backend, pytest arguments)]`: every pytest process of the suite."""
    not_independent = ["-m", "not backend_independent"]
    here = os.path.dirname(os.path.abspath(__file__))
    modules = sorted(os.path.relpath(m) for m in glob.glob(os.path.join(here, "test_*.py")))
    runs = [("tensorflow (shared process)", "tensorflow", [m for m in modules if m in SHARED_ON_TENSORFLOW])]
    runs += [(f"tensorflow {m}", "tensorflow", [m]) for m in modules if m not in SHARED_ON_TENSORFLOW]
    for backend in ("jax", "torch"):
        runs += [
            (f"{backend} {group}", backend, modules + not_independent) for group, modules in BACKEND_GROUPS.items()
        ]
        runs += [(f"{backend} {m}", backend, [m, *not_independent]) for m in ISOLATED_MODULES]
    order = {label: i for i, label in enumerate(LONGEST_FIRST)}
    return sorted(runs, key=lambda run: order.get(run[0], len(order)))


def _peak(label):
    """The measured peak (GiB) of the process `label`, or `DEFAULT_PEAK`."""
    return PEAK_GIB.get(label, DEFAULT_PEAK)


def _memory_gib(field="MemTotal"):
    with open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) / 2**20


class _Process:
    """One pytest process; its output goes to a file, printed whole when it ends (lanes do not interleave)."""

    def __init__(self, index, label, backend, args, extra, workdir):
        self.label, self.peak = label, _peak(label)
        self.log = open(os.path.join(workdir, f"{index}.log"), "w+")
        env = dict(os.environ, KERAS_BACKEND=backend)
        # --durations: each process names its slowest tests, so a CI log shows where the time goes. Each gets
        # its own --basetemp: pytest's default one is shared, and a session cleans up others' old folders.
        options = [f"--durations={DURATIONS}", f"--basetemp={workdir}/tmp{index}"]
        command = [sys.executable, "-m", "pytest", *options, *args, *extra]
        self.start = time.monotonic()
        self.popen = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def finish(self, status, usage):
        self.seconds = time.monotonic() - self.start
        self.code = os.waitstatus_to_exitcode(status)
        self.peak_gib = usage.ru_maxrss / 2**20  # kilobytes on Linux
        self.log.seek(0)
        text = self.log.read()
        self.durations = [(float(m[1]), f"{self.label}: {m[2]} {m[3]}") for m in DURATION_LINE.finditer(text)]
        print(f"\n===== KERAS_BACKEND={self.label} =====", flush=True)
        sys.stdout.write(text)
        print(f"===== {self.label}: exit {self.code}, {self.seconds:.0f} s, peak {self.peak_gib:.1f} GiB", flush=True)
        self.log.close()


def main(argv):
    jobs, extra = 2, list(argv)
    if extra[:1] and extra[0].startswith("--jobs="):
        jobs, extra = int(extra[0].split("=", 1)[1]), extra[1:]
    jobs = max(1, min(jobs, os.cpu_count() or 1))
    budget = MEMORY_BUDGET * _memory_gib()
    waiting, running, done = _runs(), {}, []
    with tempfile.TemporaryDirectory(prefix="convnext_hub_tests_") as workdir:
        while waiting or running:
            used = sum(p.peak for p in running.values())
            # Beside another process, a new one must fit in the budget by the measured peaks, and in the memory
            # free now (something else on the machine may hold some).
            free = _memory_gib("MemAvailable")
            fits = [run for run in waiting if not running or (used + _peak(run[0]) <= budget and _peak(run[0]) <= free)]
            if len(running) < jobs and fits:
                waiting.remove(fits[0])
                process = _Process(len(done) + len(running), *fits[0], extra, workdir)
                running[process.popen.pid] = process
                print(f"started {process.label}", flush=True)
                continue
            pid, status, usage = os.wait4(-1, 0)
            if pid in running:
                process = running.pop(pid)
                process.popen.returncode = os.waitstatus_to_exitcode(status)
                process.finish(status, usage)
                done.append(process)
    tests = sorted((d for p in done for d in p.durations), reverse=True)[:DURATIONS]
    print(f"\nslowest {len(tests)} tests of the suite:\n" + "\n".join(f"{s:7.1f} s  {name}" for s, name in tests))
    slowest = sorted(done, key=lambda p: -p.seconds)[:8]
    print("\nslowest pytest processes: " + "; ".join(f"{p.label} {p.seconds:.0f} s" for p in slowest))
    print(
        "largest peaks: "
        + "; ".join(f"{p.label} {p.peak_gib:.1f} GiB" for p in sorted(done, key=lambda p: -p.peak_gib)[:6])
    )
    failed = [f"{p.label} (exit {p.code})" for p in done if p.code]
    print("\nfailed: " + ", ".join(failed) if failed else "\nall backends passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
