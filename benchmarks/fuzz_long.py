"""The long fuzzing run: every property of tests/test_fuzz.py with many more examples, and the outcome counts.

    python benchmarks/fuzz_long.py                      # ~5000 examples per property, seed 0
    python benchmarks/fuzz_long.py --examples 20000 --seed 7 --json fuzz.json
    python benchmarks/fuzz_long.py --only pickle        # properties whose name contains "pickle"

Prints, per property and in total, how many hostile inputs were tried and how
each ended: accepted (a valid result), refused with a documented error (by
class), or anything else (a bug, listed with its first traceback). By default
undocumented exceptions are tallied and the run goes on (CONVNEXT_FUZZ_TALLY);
`--strict` stops each property at its first one and lets Hypothesis shrink it
to a minimal example. The exit status is 1 when anything undocumented happened.

The same long run through pytest (no counts): CONVNEXT_FUZZ_EXAMPLES=5000
python -m pytest tests/test_fuzz.py -q.
"""

import argparse
import collections
import json
import os
import sys
import time
import traceback
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--examples",
        type=int,
        default=5000,
        help="examples per property (the slow convert property runs a share of them)",
    )
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (property i uses seed + i)")
    parser.add_argument("--only", default="", help="run only the properties whose test name contains this")
    parser.add_argument(
        "--strict", action="store_true", help="fail each property at its first undocumented exception (and shrink it)"
    )
    parser.add_argument("--json", help="also write the counts to this JSON file")
    args = parser.parse_args(argv)

    os.environ["CONVNEXT_FUZZ_EXAMPLES"] = str(args.examples)
    os.environ["CONVNEXT_FUZZ_TALLY"] = "0" if args.strict else "1"
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, ROOT)
    warnings.simplefilter("ignore")  # torch's notes on odd pickle protocols, sparse tensors, ...

    import hypothesis
    import timm  # noqa: F401
    import torch  # noqa: F401  torch and timm before keras / tensorflow, as tests/conftest.py does

    from tests import test_fuzz

    tests = [
        (name, fn)
        for name, fn in vars(test_fuzz).items()
        if name.startswith("test_") and getattr(fn, "is_hypothesis_test", False) and args.only in name
    ]
    failures = {}
    timings = {}
    start = time.perf_counter()
    for i, (name, fn) in enumerate(tests):
        t0 = time.perf_counter()
        print(f"{name} ...", end=" ", flush=True)
        try:
            hypothesis.seed(args.seed + i)(fn)()
        except BaseException as e:  # noqa: BLE001  a property failed: report it and go on with the others
            if isinstance(e, KeyboardInterrupt):
                raise
            failures[name] = "".join(traceback.format_exception(e))
        timings[name] = time.perf_counter() - t0
        print(f"{timings[name]:.1f} s{'  FAILED' if name in failures else ''}", flush=True)
    total_time = time.perf_counter() - start

    outcomes = test_fuzz.OUTCOMES
    totals = collections.Counter()
    print(f"\n{'property':<58} {'inputs':>8}  outcomes")
    for prop in sorted(outcomes):
        counts = outcomes[prop]
        totals.update(counts)
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        print(f"{prop:<58} {sum(counts.values()):>8}  {detail}")
    n = sum(totals.values())
    documented = {k: v for k, v in totals.items() if k != "accepted" and not _undocumented(k)}
    undocumented = {k: v for k, v in totals.items() if _undocumented(k)}
    print(
        f"\n{n} hostile inputs tried in {total_time:.0f} s: {totals['accepted']} accepted, "
        f"{sum(documented.values())} refused with documented errors "
        f"({', '.join(f'{k} {v}' for k, v in sorted(documented.items(), key=lambda kv: -kv[1]))}), "
        f"{sum(undocumented.values())} undocumented outcomes."
    )
    if undocumented:
        print("\nUNDOCUMENTED:", ", ".join(f"{k} {v}" for k, v in sorted(undocumented.items())))
        for (prop, outcome), text in sorted(test_fuzz.FIRST_FAILURES.items()):
            print(f"\n--- first {outcome} in {prop} ---\n{text.rstrip()}")
    for name, text in failures.items():
        print(f"\n--- {name} FAILED ---\n{text.rstrip()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "examples_per_property": args.examples,
                    "seed": args.seed,
                    "seconds": round(total_time, 1),
                    "inputs": n,
                    "totals": dict(totals),
                    "per_property": {k: dict(v) for k, v in outcomes.items()},
                    "timings": {k: round(v, 1) for k, v in timings.items()},
                    "failed": sorted(failures),
                },
                f,
                indent=2,
            )
    return 1 if undocumented or failures else 0


def _undocumented(outcome):
    return outcome.startswith("UNDOCUMENTED") or outcome in (
        "amplified tensor",
        "CODE EXECUTED",
        "message without the file",
    )


if __name__ == "__main__":
    sys.exit(main())
