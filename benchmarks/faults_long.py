"""The long fault-injection run: tests/test_faults.py's SIGKILL loops and concurrent loads, many times over.

    python benchmarks/faults_long.py                      # 100 + every-step load kills, 50 CLI kills, ~30 min
    python benchmarks/faults_long.py --load-kills 20 --cli-kills 10 --concurrent-rounds 1 --json faults.json

What runs (a random-weight convnext_zepto_rms served by the fake Hub of tests/hub_server.py):

* `--load-kills` children do a first, uncached `load_pretrained` and are SIGKILLed at a delay drawn
  uniformly (seeded) over the duration of an uncached load, measured by a child run to its end first
  and again every `--recalibrate-every` kills; then one child per filesystem change such a load
  makes (`--no-every-step` to skip), killed right after it.
  After each kill a load in this process must give timm's logits, and every cache entry seen
  before and after it must be complete (meta.json, size and xxh3-128, the checkpoint's tensors bit for bit).
* `--cli-kills` runs of `python -m converters.timm_to_keras FILE --out DIR`, SIGKILLed likewise (every
  other one overwriting a previous output); DIR must then be absent or complete and loadable. Plus
  one run killed right after it deletes the first file of the output it replaces.
* `--concurrent-rounds` rounds of 4 processes loading the same uncached checkpoint at once, with file
  locks and with every file lock a no-op: all must get the same logits and leave one valid entry.

Prints the counts (faults injected, runs survived, invalid entries found, where the kills landed)
and exits 1 when anything was found invalid or failed.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-kills", type=int, default=100, help="random-time kills of load_pretrained")
    parser.add_argument(
        "--no-every-step", action="store_true", help="skip the kills right after each filesystem change of a load"
    )
    parser.add_argument("--cli-kills", type=int, default=50, help="random-time kills of the converter CLI")
    parser.add_argument(
        "--concurrent-rounds", type=int, default=3, help="rounds of 4 concurrent loads, with and without file locks"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ahead", type=int, default=2, help="children importing while one runs")
    parser.add_argument(
        "--recalibrate-every",
        type=int,
        default=10,
        help="measure a whole run again every N kills (the kill delays follow the machine's load)",
    )
    parser.add_argument("--json", help="also write the counts to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    args = parser.parse_args(argv)

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO_ROOT))
    import pytest
    import timm  # noqa: F401
    import torch  # noqa: F401  torch and timm before keras / tensorflow, as tests/conftest.py does

    from tests import faults
    from tests.hub_server import LocalHub, configure_hub_env

    work = Path(tempfile.mkdtemp(prefix="convnext_faults_"))
    started = time.monotonic()
    results, problems = [], []

    def log(message):
        print(f"[{time.monotonic() - started:7.1f} s] {message}", flush=True)

    monkeypatch = pytest.MonkeyPatch()
    concurrent = faults.FaultStats("4 concurrent uncached loads (rounds: with file locks / every lock a no-op)")
    try:
        reference = faults.make_reference(work)
        with LocalHub(work / "hub_store") as hub:
            hf_cache = configure_hub_env(monkeypatch, hub.endpoint, work / "hf_home" / "hub").cache_dir
            faults.upload(hub, reference)

            every_step = (lambda events: []) if args.no_every_step else (lambda events: range(1, len(events) + 1))
            sections = [
                lambda: faults.sigkill_load_loop(
                    reference,
                    hf_cache,
                    work / "load",
                    args.load_kills,
                    args.seed,
                    pick_events=every_step,
                    ahead=args.ahead,
                    recalibrate_every=args.recalibrate_every,
                    log=log,
                ),
                lambda: faults.sigkill_cli_loop(
                    reference,
                    work / "cli",
                    args.cli_kills,
                    args.seed,
                    ahead=args.ahead,
                    recalibrate_every=args.recalibrate_every,
                    log=log,
                ),
                lambda: replace_in_place(faults, reference, work / "cli_replace"),
            ]
            for section in sections:
                try:
                    results.append(section())
                    log(results[-1].summary())
                except Exception as e:  # noqa: BLE001 - a section that cannot run is reported, the rest goes on
                    problems.append(f"a section failed to run: {type(e).__name__}: {e}")
                    log(problems[-1][:3000])

            for i in range(args.concurrent_rounds):
                for no_locks in (False, True):
                    found = faults.concurrent_loads(
                        reference, hub, hf_cache, work / f"concurrent{i}-{no_locks}", count=4, no_locks=no_locks
                    )
                    concurrent.runs += 4
                    concurrent.states["no locks" if no_locks else "file locks"] += 1
                    concurrent.failures += [f"round {i} (no_locks={no_locks}): {p}" for p in found]
                    concurrent.invalid_entries += sum("the cache holds" in p for p in found)
                    concurrent.survived += 0 if found else 4
                    log(f"concurrent round {i}, no_locks={no_locks}: {'ok' if not found else found}")
    finally:
        monkeypatch.undo()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    for stats in results + [concurrent]:
        problems += stats.failures
    killed = sum(s.killed for s in results)
    survived = sum(s.survived for s in results)
    invalid = sum(s.invalid_entries + s.corrupt_warnings for s in results + [concurrent])
    print("\n==== fault injection")
    for stats in results + [concurrent]:
        print(" ", stats.summary())
    print(
        f"\nfaults injected (SIGKILLs): {killed}; runs survived: {survived} of {killed}; "
        f"concurrent processes: {concurrent.runs}, correct: {concurrent.survived}; "
        f"invalid entries / outputs found: {invalid}; failures: {len(problems)}; "
        f"{time.monotonic() - started:.0f} s" + (f"; work folder {work}" if args.keep else "")
    )
    for problem in problems:
        print("FAILED:", problem[:3000])
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "faults_injected": killed,
                    "survived": survived,
                    "invalid_found": invalid,
                    "failures": problems,
                    "concurrent_processes": concurrent.runs,
                    "concurrent_correct": concurrent.survived,
                    "loops": [s.as_dict() for s in results + [concurrent]],
                    "seed": args.seed,
                },
                indent=2,
                default=str,
            )
        )
    return 1 if problems or invalid else 0


def replace_in_place(faults, reference, work):
    """`python -m converters.timm_to_keras` over a previous output, SIGKILLed right after it deletes
    the first file of that output: DIR must still be absent or complete."""
    stats = faults.FaultStats("SIGKILL while the converter CLI replaces a previous output")
    work.mkdir(parents=True)
    out = work / "out"
    first = faults.cli(reference.weights, out, work / "first.stderr")
    assert first.wait(faults.CHILD_TIMEOUT) == 0, faults.tail(work / "first.stderr")
    proc = faults.cli(reference.weights, out, work / "second.stderr", python_code=faults.CLI_KILLED_WHILE_DELETING)
    code = proc.wait(faults.CHILD_TIMEOUT)
    stats.runs = 1
    stats.killed = int(code == -signal.SIGKILL)
    stats.finished_first = int(code == 0)
    problem = faults.output_problem(out, reference) if out.exists() else None
    stats.states["no output" if not out.exists() else "complete output" if problem is None else "partial output"] += 1
    if code not in (0, -signal.SIGKILL):
        stats.failures.append(f"the converter failed ({code}): {faults.tail(work / 'second.stderr')}")
    if problem is not None:
        stats.invalid_entries += 1
        stats.failures.append(f"after a SIGKILL while replacing it, {out} {problem}")
    elif stats.killed:
        stats.survived = 1
    return stats


if __name__ == "__main__":
    sys.exit(main())
