"""Fault injection, the machinery: children that load or convert and get SIGKILLed, racing processes,
cache audits. The tests are `test_faults_*.py`, one file per concern: SIGKILL at random points
(`_sigkill`), 4 processes at once with and without file locks (`_concurrent`), a full disk (`_disk`),
a converter version bump (`_version`).

What must hold after every fault: a later `load_pretrained` gives logits equal to timm's
(max|d| <= 1e-5 * max|ref|), and every directory under `entries/` is a complete entry
(meta.json readable, weights size and xxh3 as recorded, the checkpoint's tensors bit for bit).
Temp dirs left by killed writers are allowed: nothing reads them.

The children (`python -c LOAD_CHILD`, the converter CLI as `python -m converters.timm_to_keras`
or, in the kill loop, run through runpy once keras is imported) import neither torch nor
timm; they talk to the fake Hub of `tests/hub_server.py` through HF_ENDPOINT / HF_HUB_CACHE /
CONVNEXT_HUB_CACHE. Kill delays are spread uniformly (seeded) over a measured uncached run.
The same loops with many more runs are `benchmarks/faults_long.py`, which imports this module
and prints the counts.
"""

import collections
import contextlib
import hashlib
import json
import logging
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch  # before keras (tests/conftest.py has imported it already)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from convnext_hub.hub import cache as cache_module  # noqa: E402
from convnext_hub.hub import load_pretrained  # noqa: E402
from convnext_hub.hub.cache import META_FILE, WEIGHTS_FILE, entry_key  # noqa: E402
from tests.checkpoint_factory import (  # noqa: E402
    random_timm_model,
    save_safetensors,
    state_dict_numpy,
)
from tests.hub_server import local_hub, upload_timm_checkpoint  # noqa: E402,F401  (local_hub: for `hub`)
from tests.timm_comparison import Comparison  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCH = "convnext_zepto_rms"  # the smallest ConvNeXt (8.6 MB of float32)
TAG = "convnext_zepto_rms.ra4_e3600_r224_in1k"
IMAGES = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
CI_LOAD_KILLS = 8  # benchmarks/faults_long.py: --load-kills (100 by default)
CI_CLI_KILLS = 4  # benchmarks/faults_long.py: --cli-kills (50 by default)
CI_SEED = 1234
CHILD_TIMEOUT = 300  # seconds for any child to import, or to finish what it was asked


# --------------------------------------------------------------------------- children

LOAD_CHILD = r"""
# Imports, prints READY, reads "go KILL_AT" from stdin, loads the checkpoint (uncached), prints DONE.
# KILL_AT >= 1: SIGKILL itself right after its KILL_AT-th filesystem change in the two caches;
# 0: only count them (printed as EVENTS); -1: nothing (the parent sends the SIGKILL).
import builtins, io, logging, os, signal, sys, time

logging.basicConfig(level=logging.INFO, format="%(process)d %(levelname)s %(name)s: %(message)s")
import keras
from convnext_hub.hub import load_pretrained

roots = tuple(os.path.realpath(os.environ[v]) for v in ("CONVNEXT_HUB_CACHE", "HF_HUB_CACHE"))
events, kill_at, armed = [], -1, False


def where(args):
    # "@cache" / "@hf" for a path in one of the caches, "@" for fds and relative names, else None
    path = next((a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))), None)
    if path is None or not os.path.isabs(os.fsdecode(path)):
        return "@"
    path = os.path.realpath(os.fsdecode(path))
    return next((at for root, at in zip(roots, ("@cache", "@hf")) if path.startswith(root)), None)


def hook(name, fn, when=lambda args, kwargs: True):
    def hooked(*args, **kwargs):
        result = fn(*args, **kwargs)
        if armed and when(args, kwargs) and (at := where(args)) is not None:
            events.append(name + at)
            if len(events) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return result
    return hooked


for name in ("replace", "rename", "mkdir", "rmdir", "unlink", "remove", "symlink", "link", "fsync", "truncate"):
    setattr(os, name, hook(name, getattr(os, name)))
creating = os.O_WRONLY | os.O_RDWR | os.O_CREAT
os.open = hook("open", os.open, lambda a, k: (a[1] if len(a) > 1 else k.get("flags", 0)) & creating)
writing = lambda a, k: any(c in str(a[1] if len(a) > 1 else k.get("mode", "r")) for c in "wax+")
builtins.open = io.open = hook("open", builtins.open, writing)
keras.Model.save_weights = hook("save_weights", keras.Model.save_weights)  # the entry's weights file

print("READY", flush=True)
command = sys.stdin.readline().split()
if command[:1] != ["go"]:
    sys.exit(3)
kill_at = int(command[1])
armed = kill_at >= 0
start = time.monotonic()
load_pretrained(sys.argv[1])  # the cache from CONVNEXT_HUB_CACHE
armed = False
print(f"DONE {time.monotonic() - start:.4f}", flush=True)
print("EVENTS", len(events), *events, flush=True)
"""

CLI_CHILD = r"""
# `python -m converters.timm_to_keras ARGS`, started by "go" on stdin; keras (the slow import) comes first.
import os, runpy, sys
import keras  # noqa: F401

print("READY", flush=True)
if sys.stdin.readline().split()[:1] != ["go"]:
    sys.exit(3)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nobody reads the progress lines
sys.argv = ["timm_to_keras", *sys.argv[1:]]
runpy.run_module("converters.timm_to_keras", run_name="__main__", alter_sys=True)
"""

CONCURRENT_CHILD = r'''
"""One of `count` processes that load the same uncached checkpoint at once."""
import logging, os, sys, time

index, count, sync, images, out, no_locks = sys.argv[1:7]
index, count, no_locks = int(index), int(count), no_locks == "1"
if no_locks:  # before anything imports it: every file lock (ours and huggingface_hub's) does nothing
    import filelock

    class NoLock:
        is_locked = False

        def __init__(self, lock_file, *args, **kwargs):
            self.lock_file = os.fspath(lock_file)

        def acquire(self, *args, **kwargs):
            return self

        def release(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    filelock.FileLock = filelock.UnixFileLock = filelock.SoftFileLock = NoLock

logging.basicConfig(level=logging.INFO, format=f"[{index}] %(levelname)s %(name)s: %(message)s")
import keras
import numpy as np
from convnext_hub.hub import load_pretrained, timm_hub
from convnext_hub.hub import cache as cache_module


def barrier(stage):
    open(os.path.join(sync, f"{stage}.{index}"), "w").close()
    deadline = time.monotonic() + 240
    while sum(name.startswith(stage + ".") for name in os.listdir(sync)) < count:
        if time.monotonic() > deadline:
            sys.exit(f"barrier {stage!r}: the other processes never came")
        time.sleep(0.01)


if no_locks:
    assert cache_module.FileLock is NoLock
    convert_source = timm_hub.convert_source

    def convert_then_meet(*args):  # all convert, then all race to rename their entry into place
        result = convert_source(*args)
        barrier("converted")
        return result

    timm_hub.convert_source = convert_then_meet

barrier("ready")
model = load_pretrained(sys.argv[7])
np.save(out, keras.ops.convert_to_numpy(model(np.load(images), training=False)))
'''


def child_env(**extra):
    """The environment of a child: this one (HF_ENDPOINT, HF_HUB_CACHE, ...) with the repo importable."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2", **{k: str(v) for k, v in extra.items()}}


class LineReader:
    """Lines from a child's unbuffered stdout pipe, with a deadline."""

    def __init__(self, proc):
        self.proc, self.buffer = proc, b""

    def wait_for(self, text, timeout=CHILD_TIMEOUT):
        """The first line containing `text`; None when the child closed stdout first."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                if text in line.decode(errors="replace"):
                    return line.decode(errors="replace")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line with {text!r} from pid {self.proc.pid} within {timeout} s")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    return None
                self.buffer += chunk


def sigkill(proc):
    """SIGKILL `proc` (if it still runs); its exit status."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait()


def close_pipes(proc):
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def send(proc, line):
    with contextlib.suppress(BrokenPipeError):  # a child that died already is reported by its exit status
        proc.stdin.write(line.encode() + b"\n")


class Children:
    """Children spawned `ahead` of their turn, so that they import while the one before them runs."""

    def __init__(self, spawn, total, ahead=2):
        self.spawn, self.total, self.ahead = spawn, total, ahead
        self.waiting, self.spawned = {}, 0

    def take(self, i):
        while self.spawned < min(self.total, i + 1 + self.ahead):
            self.waiting[self.spawned] = self.spawn(self.spawned)
            self.spawned += 1
        return self.waiting.pop(i)

    def close(self):
        for proc in self.waiting.values():
            sigkill(proc)
            close_pipes(proc)


def run_child(proc, stderr_path, command, kill_after=None, prepare=lambda: None):
    """Wait for the child's READY, `prepare()`, send it `command`; then SIGKILL it `kill_after` s later,
    or wait for its exit. `(exit status, seconds since the command, its LineReader)`."""
    lines = LineReader(proc)
    try:
        if not lines.wait_for("READY"):
            raise RuntimeError(f"the child never got ready ({proc.wait()}):\n{tail(stderr_path)}")
        prepare()
        start = time.monotonic()
        send(proc, command)
        if kill_after is not None:
            time.sleep(kill_after)
            code = sigkill(proc)
        else:
            code = proc.wait(CHILD_TIMEOUT)
        return code, time.monotonic() - start, lines
    finally:
        sigkill(proc)


def tail(path, chars=3000):
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# --------------------------------------------------------------------------- reference and checks


@dataclass
class Reference:
    """A random timm checkpoint: its file, tensors, logits on IMAGES and its cache key."""

    weights: Path
    state_dict: dict
    logits: np.ndarray
    etag: str

    @property
    def key(self):
        return entry_key(self.etag)  # with the CONVERTER_VERSION in force now


def make_reference(folder, seed=0):
    model = random_timm_model(ARCH, seed=seed)
    weights = save_safetensors(model.state_dict(), Path(folder) / f"{ARCH}-{seed}.safetensors")
    with torch.no_grad():
        logits = model(torch.from_numpy(IMAGES).permute(0, 3, 1, 2)).numpy()
    etag = hashlib.sha256(weights.read_bytes()).hexdigest()  # the fake Hub's etag of an LFS file
    return Reference(weights, state_dict_numpy(model), logits, etag)


def upload(hub, reference):
    """`timm/<TAG>` with the reference's `model.safetensors` and a timm config.json; the commit sha."""
    return upload_timm_checkpoint(hub, TAG, reference.weights)


def logits_of(model):
    return keras.ops.convert_to_numpy(model(IMAGES, training=False))


def mismatch(actual, expected):
    """None when `actual` equals timm's `expected` logits within the bar of `convnext_hub.convert.verification`
    (1e-5 x max|expected|), else what differs. (The loops record problems instead of asserting.)"""
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        return f"logits of shape {actual.shape}, expected {expected.shape}"
    comparison = Comparison("logits", float(np.abs(actual - expected).max()), float(np.abs(expected).max()))
    return None if comparison.passed else f"logits differ from timm's: {comparison.line()}"


def assert_close(actual, expected):
    problem = mismatch(actual, expected)
    assert problem is None, problem


def stored_state_dict(weights):
    """The timm state dict of an entry's weights file, loaded into a model of ARCH."""
    from convnext_hub import create_model
    from convnext_hub.convert.conversion import export_timm_state_dict
    from convnext_hub.convert.readers import read_safetensors
    from convnext_hub.model import zeros_initialized
    from convnext_hub.weights_io import fill_shell

    with zeros_initialized():
        model = create_model(ARCH)
    return export_timm_state_dict(fill_shell(model, read_safetensors(weights), weights))


def entry_problem(path, reference):
    """None when `path` is a complete entry of the reference checkpoint, else what is wrong with it."""
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError) as e:
        return f"unreadable {META_FILE}: {e}"
    weights = path / WEIGHTS_FILE
    try:
        digest = cache_module.xxh3_file(weights)
        size = weights.stat().st_size
        tensors = stored_state_dict(weights)
    except Exception as e:  # noqa: BLE001 - any failure to read is the finding
        return f"unreadable {WEIGHTS_FILE}: {type(e).__name__}: {e}"
    if not isinstance(meta, dict) or digest != meta.get("weights_xxh3") or size != meta.get("weights_bytes"):
        return f"{WEIGHTS_FILE} ({size} bytes, xxh3 {digest[:12]}) is not what {META_FILE} records"
    if set(tensors) != set(reference.state_dict):
        return f"tensors {sorted(set(tensors) ^ set(reference.state_dict))[:4]} missing or unexpected"
    for name, value in tensors.items():
        if not np.array_equal(value, reference.state_dict[name]):
            return f"tensor {name} differs from the checkpoint's"
    if path.name != reference.key or meta.get("source", {}).get("etag") != reference.etag:
        return f"entry {path.name} is not the reference's ({reference.key})"
    return None


@dataclass
class Audit:
    """What a cache root holds for TAG."""

    valid: list = field(default_factory=list)  # entry dirs that pass `entry_problem`
    invalid: list = field(default_factory=list)  # "path: problem"
    stale_tmp: int = 0  # temp dirs of interrupted writes (never read)
    bad_refs: list = field(default_factory=list)


def audit_cache(root, reference):
    audit = Audit()
    folder = Path(root) / "entries" / TAG
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        problem = entry_problem(path, reference)
        if problem is None:
            audit.valid.append(path)
        else:
            audit.invalid.append(f"{path}: {problem}")
    tmp = Path(root) / "tmp"
    audit.stale_tmp = len(list(tmp.iterdir())) if tmp.is_dir() else 0
    refs = Path(root) / "refs" / TAG
    for ref in sorted(refs.iterdir()) if refs.is_dir() else []:
        if ref.name.startswith("."):
            continue  # the temp file of an interrupted ref write
        if ref.read_text().strip() != reference.key:
            audit.bad_refs.append(f"{ref}: {ref.read_text()!r}")
    return audit


@contextlib.contextmanager
def captured_logs(name="convnext_hub"):
    """Messages logged under `name` at INFO and above (pytest's caplog works in tests only)."""
    messages = []

    class Handler(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger, handler = logging.getLogger(name), Handler(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def conversions(messages):
    return sum("to Keras" in m for m in messages)


# --------------------------------------------------------------------------- SIGKILL loops


@dataclass
class FaultStats:
    """Counts of one SIGKILL loop (see `sigkill_load_loop`, `sigkill_cli_loop`)."""

    what: str
    calibration_s: float = 0.0  # the measured duration the kill delays are spread over (the last one)
    calibrations: list = field(default_factory=list)  # every such measurement
    events: list = field(default_factory=list)  # filesystem changes of one uncached load, in order
    runs: int = 0  # children started (calibration not counted)
    killed: int = 0  # faults injected: children that died of the SIGKILL
    finished_first: int = 0  # children done before their kill came
    survived: int = 0  # killed runs after which everything checked out
    invalid_entries: int = 0  # entries / outputs found partial or wrong (must stay 0)
    corrupt_warnings: int = 0  # "corrupt cache entry" on the later load: a partial entry had been seen
    stale_tmp: int = 0  # temp dirs left behind by killed writers (allowed: nothing reads them)
    states: collections.Counter = field(default_factory=collections.Counter)  # where the kills landed
    failures: list = field(default_factory=list)

    def summary(self):
        return (
            f"{self.what}: {self.runs} runs, {self.killed} SIGKILLed, {self.finished_first} finished first, "
            f"{self.survived} survived, {self.invalid_entries} invalid entries, "
            f"{self.corrupt_warnings} corrupt-entry warnings, {self.stale_tmp} stale temp dirs; "
            f"kills landed: {dict(sorted(self.states.items()))}"
            + (
                f"; a whole run took {min(self.calibrations):.2f}-{max(self.calibrations):.2f} s"
                if self.calibrations
                else ""
            )
            + (f", {len(self.events)} filesystem changes" if self.events else "")
        )

    def as_dict(self):
        return {k: (dict(v) if isinstance(v, collections.Counter) else v) for k, v in self.__dict__.items()}


def _spawn_loader(cache_root, stderr_path):
    with open(stderr_path, "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-c", LOAD_CHILD, TAG],
            cwd=REPO_ROOT,
            env=child_env(CONVNEXT_HUB_CACHE=cache_root),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            bufsize=0,
        )


def _wipe_hf_cache(hf_cache):
    """huggingface_hub's cache (private to the test) emptied: every run starts from the same state."""
    for path in Path(hf_cache).iterdir() if Path(hf_cache).is_dir() else []:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()


def _kill_state(root, hf_cache, reference, audit):
    """Where a kill landed, judged from what it left."""
    if audit.valid:
        return "refs written" if (Path(root) / "refs" / TAG / "main").exists() else "entry in place"
    if audit.stale_tmp:
        return "writing the entry"
    blobs = Path(hf_cache) / f"models--timm--{TAG}" / "blobs"
    if (blobs / reference.etag).exists():
        return "downloaded, converting"
    if blobs.is_dir() and any(blobs.glob("*.incomplete")):
        return "downloading"
    return "before the download"


def cache_steps(events, count=2):
    """Event numbers (1-based) to kill after in CI: the weights written (meta.json not yet), the entry
    renamed into place (refs not yet written), then others spread over the cache's steps."""
    ours = [k for k, event in enumerate(events, 1) if event.endswith("@cache")]
    named = [events.index(name) + 1 for name in ("save_weights@cache", "replace@cache") if name in events]
    spread = [ours[round(j * (len(ours) - 1) / max(count - 1, 1))] for j in range(count)] if ours else []
    return sorted(list(dict.fromkeys(named + spread))[:count])


def sigkill_load_loop(
    reference,
    hf_cache,
    work,
    random_kills,
    seed,
    pick_events=cache_steps,
    ahead=2,
    recalibrate_every=0,
    log=lambda message: None,
):
    """Children do a first (uncached) `load_pretrained` of TAG and are SIGKILLed.

    A first child runs to its end: it measures the duration and lists the filesystem changes of an
    uncached load (and so does one child every `recalibrate_every` runs, as the machine's load
    changes). `random_kills` children are killed at delays spread uniformly over the last measured
    duration (seeded), and one child per event in `pick_events(events)` right after that filesystem
    change. After each kill a load in this process must give the reference logits, and every cache
    entry seen, before and after that load, must be complete.
    """
    work, rng = Path(work), random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    stats = FaultStats("SIGKILL during load_pretrained")
    children = Children(lambda i: _spawn_loader(work / f"run{i}", work / f"run{i}.stderr"), 1 + random_kills, ahead)
    counter = iter(range(1 << 30))

    def calibrate():
        i = next(counter)
        root, stderr_path = work / f"run{i}", work / f"run{i}.stderr"
        code, _, lines = run_child(children.take(i), stderr_path, "go 0", prepare=lambda: _wipe_hf_cache(hf_cache))
        done, events = lines.wait_for("DONE"), lines.wait_for("EVENTS")
        close_pipes(lines.proc)
        assert code == 0 and done and events, f"an uncached load failed ({code}):\n{tail(stderr_path)}"
        audit = audit_cache(root, reference)
        assert [p.name for p in audit.valid] == [reference.key] and not audit.invalid, audit
        shutil.rmtree(root, ignore_errors=True)
        stats.calibrations.append(float(done.split()[1]))
        stats.calibration_s, stats.events = stats.calibrations[-1], events.split()[2:]
        log(f"run {i}: an uncached load takes {stats.calibration_s:.3f} s, {len(stats.events)} filesystem changes")

    try:
        calibrate()
        events = list(stats.events)  # the numbering of the "event" plans
        plans = [("fraction", rng.random()) for _ in range(random_kills)]
        plans += [("event", k) for k in pick_events(events)]
        children.total = 1 + len(plans) + ((len(plans) - 1) // recalibrate_every if recalibrate_every else 0)
        for n, (kind, value) in enumerate(plans):
            if recalibrate_every and n and n % recalibrate_every == 0:
                calibrate()
            i = next(counter)
            root, stderr_path = work / f"run{i}", work / f"run{i}.stderr"
            delay = value * stats.calibration_s if kind == "fraction" else None
            label = (
                f"run {i} (" + (f"{delay:.3f} s" if delay is not None else f"after {events[value - 1]} #{value}") + ")"
            )
            proc = children.take(i)
            stats.runs += 1
            code, _, _ = run_child(
                proc,
                stderr_path,
                f"go {value if kind == 'event' else -1}",
                kill_after=delay,
                prepare=lambda: _wipe_hf_cache(hf_cache),
            )  # uncached: the source too
            close_pipes(proc)
            _check_after_load_kill(stats, reference, hf_cache, root, code, label, stderr_path)
            shutil.rmtree(root, ignore_errors=True)
            log(f"{label}: exit {code}; {len(stats.failures)} failures so far")
    finally:
        children.close()
    return stats


def _check_after_load_kill(stats, reference, hf_cache, root, code, label, stderr_path):
    killed = code == -signal.SIGKILL
    if killed:
        stats.killed += 1
    elif code == 0:
        stats.finished_first += 1
    else:
        stats.failures.append(f"{label}: the child failed ({code}):\n{tail(stderr_path)}")
    before = audit_cache(root, reference)
    if killed:
        stats.states[_kill_state(root, hf_cache, reference, before)] += 1
    stats.stale_tmp += before.stale_tmp
    stats.invalid_entries += len(before.invalid)
    stats.failures += [f"{label}: after the kill: {p}" for p in before.invalid + before.bad_refs]
    try:
        with captured_logs() as messages:
            model = load_pretrained(TAG, cache_dir=root)
        problem = mismatch(logits_of(model), reference.logits)
    except Exception as e:  # noqa: BLE001 - recorded, the loop goes on
        problem, messages = f"the next load failed: {type(e).__name__}: {e}", []
    corrupt = sum("corrupt cache entry" in m for m in messages)
    stats.corrupt_warnings += corrupt
    after = audit_cache(root, reference)
    if problem is None and corrupt:
        problem = f"the next load found {corrupt} corrupt entries"
    if problem is None and not (len(after.valid) == 1 and not after.invalid and not after.bad_refs):
        problem = f"after the next load the cache holds {after}"
    if problem is not None:
        stats.failures.append(f"{label}: {problem}")
    elif killed and not before.invalid and not before.bad_refs:
        stats.survived += 1


def output_problem(out, reference):
    """None when `out` is a complete `timm_to_keras` output of the reference checkpoint."""
    files = sorted(p.name for p in Path(out).iterdir())
    if files != ["config.json", "model.weights.h5"]:
        return f"holds {files}"
    try:
        config = json.loads((Path(out) / "config.json").read_text())
        assert config["architecture"] == ARCH, config["architecture"]
        return mismatch(logits_of(load_pretrained(Path(out))), reference.logits)
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        return f"does not load: {type(e).__name__}: {e}"


def cli(source, out, stderr_path, python_code=None, stdin=None, stdout=subprocess.DEVNULL):
    """`python -m converters.timm_to_keras SOURCE --out OUT` (or `python -c python_code SOURCE --out OUT`)."""
    command = ["-c", python_code] if python_code else ["-m", "converters.timm_to_keras"]
    with open(stderr_path, "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, *command, str(source), "--out", str(out)],
            cwd=REPO_ROOT,
            env=child_env(),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            bufsize=0,
        )


def sigkill_cli_loop(reference, work, kills, seed, ahead=2, recalibrate_every=0, log=lambda message: None):
    """`python -m converters.timm_to_keras <file> --out DIR` SIGKILLed at delays spread uniformly over
    the duration of a whole run, measured by a first child (and one every `recalibrate_every` runs);
    DIR must then be absent or a complete output. Every other run overwrites a complete output."""
    work, rng = Path(work), random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    stats = FaultStats("SIGKILL during python -m converters.timm_to_keras")
    children = Children(
        lambda i: cli(
            reference.weights, work / f"out{i}", work / f"cli{i}.stderr", CLI_CHILD, subprocess.PIPE, subprocess.PIPE
        ),
        1 + kills + ((kills - 1) // recalibrate_every if recalibrate_every else 0),
        ahead,
    )
    golden, counter = work / "golden", iter(range(1 << 30))

    def calibrate():
        i = next(counter)
        proc = children.take(i)
        code, duration, _ = run_child(proc, work / f"cli{i}.stderr", "go")
        close_pipes(proc)
        assert code == 0, f"a conversion failed ({code}):\n{tail(work / f'cli{i}.stderr')}"
        problem = output_problem(work / f"out{i}", reference)
        assert problem is None, f"{work / f'out{i}'} {problem}"
        if not golden.exists():
            shutil.copytree(work / f"out{i}", golden)
        shutil.rmtree(work / f"out{i}")
        stats.calibrations.append(duration)
        stats.calibration_s = duration
        log(f"run {i}: a conversion takes {duration:.3f} s")

    try:
        calibrate()
        for n in range(kills):
            if recalibrate_every and n and n % recalibrate_every == 0:
                calibrate()
            i = next(counter)
            out, overwrite, delay = work / f"out{i}", n % 2 == 1, rng.random() * stats.calibration_s
            label = f"run {i} ({'overwrite, ' if overwrite else ''}{delay:.3f} s)"
            proc = children.take(i)
            stats.runs += 1
            code, _, _ = run_child(
                proc,
                work / f"cli{i}.stderr",
                "go",
                kill_after=delay,
                prepare=lambda: overwrite and shutil.copytree(golden, out),
            )
            close_pipes(proc)
            if code == -signal.SIGKILL:
                stats.killed += 1
            elif code == 0:
                stats.finished_first += 1
            else:
                stats.failures.append(f"{label}: the converter failed ({code}):\n{tail(work / f'cli{i}.stderr')}")
            problem = output_problem(out, reference) if out.exists() else None
            state = "no output" if not out.exists() else "complete output" if problem is None else "partial output"
            if code == -signal.SIGKILL:
                stats.states[state + (" (overwrite run)" if overwrite else "")] += 1
            staging = [p for p in work.iterdir() if p.name.startswith(f".{out.name}.")]
            stats.stale_tmp += len(staging)
            if problem is not None:
                stats.invalid_entries += 1
                stats.failures.append(f"{label}: {out} {problem}")
            elif code == -signal.SIGKILL:
                stats.survived += 1
            for path in staging + [out]:
                shutil.rmtree(path, ignore_errors=True)
            log(f"{label}: exit {code}, {state}")
    finally:
        children.close()
    return stats


CLI_KILLED_WHILE_DELETING = r'''
"""`python -m converters.timm_to_keras SOURCE --out OUT`, SIGKILLed right after it deletes the first
file of OUT's previous contents: the worst moment for an output that is replaced in place."""
import os, runpy, signal, sys

out = os.path.abspath(sys.argv[3])
previous = {(s.st_dev, s.st_ino) for s in (os.stat(os.path.join(out, n)) for n in os.listdir(out))}
unlink = os.unlink


def unlink_then_die(path, *, dir_fd=None):
    st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    unlink(path, dir_fd=dir_fd)
    if (st.st_dev, st.st_ino) in previous:
        os.kill(os.getpid(), signal.SIGKILL)


os.unlink = os.remove = unlink_then_die
sys.argv = ["timm_to_keras", *sys.argv[1:]]
runpy.run_module("converters.timm_to_keras", run_name="__main__", alter_sys=True)
'''


def concurrent_loads(reference, hub, hf_cache, work, count=4, no_locks=False):
    """`count` processes load TAG, uncached, at the same moment; what went wrong (an empty list if nothing).

    With `no_locks` every file lock in them is a no-op and each waits, once it has converted, until
    all have: so all `count` convert, and all race to rename their entry into place.
    """
    work, cache_root, sync = Path(work), Path(work) / "cache", Path(work) / "sync"
    sync.mkdir(parents=True)
    np.save(work / "images.npy", IMAGES)
    _wipe_hf_cache(hf_cache)
    hub.clear_log()
    env = child_env(CONVNEXT_HUB_CACHE=cache_root)
    procs = []
    try:
        for i in range(count):
            with open(work / f"child{i}.stderr", "wb") as stderr:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            CONCURRENT_CHILD,
                            str(i),
                            str(count),
                            str(sync),
                            str(work / "images.npy"),
                            str(work / f"out{i}.npy"),
                            "1" if no_locks else "0",
                            TAG,
                        ],
                        cwd=REPO_ROOT,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=stderr,
                    )
                )
        codes = [p.wait(CHILD_TIMEOUT) for p in procs]
    finally:
        for p in procs:
            sigkill(p)
    logs = [tail(work / f"child{i}.stderr", 10**6) for i in range(count)]
    if codes != [0] * count:
        return [f"exit statuses {codes}:\n" + "\n".join(log[-2000:] for log in logs)]
    problems = [
        f"process {i}: {problem}"
        for i in range(count)
        if (problem := mismatch(np.load(work / f"out{i}.npy"), reference.logits))
    ]
    converted = sum(log.count("to Keras") for log in logs)
    if converted != (count if no_locks else 1):  # with locks one converts; without, all do
        problems.append(f"{converted} conversions")
    audit = audit_cache(cache_root, reference)
    if [p.name for p in audit.valid] != [reference.key] or audit.invalid or audit.bad_refs or audit.stale_tmp:
        problems.append(f"the cache holds {audit}")
    downloads = len(hub.file_requests("model.safetensors", method="GET"))
    if not ((1 <= downloads <= count) if no_locks else downloads == 1):
        problems.append(f"{downloads} downloads")
    return problems


def bump_converter_version(monkeypatch):
    """Set CONVERTER_VERSION one higher everywhere it was imported by name; the new version."""
    from convnext_hub.convert.version import CONVERTER_VERSION as old

    new = str(int(old) + 1) if old.isdigit() else old + ".1"
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("converters", "convnext_hub") and getattr(module, "CONVERTER_VERSION", None) == old:
            monkeypatch.setattr(module, "CONVERTER_VERSION", new)
    return new


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return make_reference(tmp_path_factory.mktemp("faults_checkpoint"))


@pytest.fixture
def hub(local_hub, reference):
    local_hub.commit = upload(local_hub, reference)
    return local_hub


def only_entry(root):
    entries = sorted((Path(root) / "entries" / TAG).iterdir())
    assert len(entries) == 1, entries
    return entries[0]
