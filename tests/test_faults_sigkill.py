"""SIGKILL at random moments (and right after chosen filesystem steps) of a first `load_pretrained` and of
the converter CLI: afterwards the cache holds only complete entries and `--out` is absent or complete.
The machinery is tests/faults.py; `benchmarks/faults_long.py` runs the same loops much longer."""

import signal

from tests.faults import (  # noqa: F401  (hub, local_hub, reference: fixtures)
    CHILD_TIMEOUT,
    CI_CLI_KILLS,
    CI_LOAD_KILLS,
    CI_SEED,
    CLI_KILLED_WHILE_DELETING,
    cli,
    hub,
    local_hub,
    output_problem,
    reference,
    sigkill_cli_loop,
    sigkill_load_loop,
    tail,
)


def test_sigkill_during_first_load_leaves_no_partial_entry(hub, reference, tmp_path):
    """CI_LOAD_KILLS kills at random moments of a first load, and 2 right after chosen cache steps
    (every step, and 100 random kills: benchmarks/faults_long.py)."""
    stats = sigkill_load_loop(reference, hub.cache_dir, tmp_path, CI_LOAD_KILLS, CI_SEED)
    print(stats.summary())
    assert stats.failures == [], "\n".join(stats.failures)
    assert stats.invalid_entries == stats.corrupt_warnings == 0
    assert stats.runs == CI_LOAD_KILLS + 2 and stats.killed >= 3 and stats.survived == stats.killed, stats.summary()


def test_sigkill_during_cli_conversion_leaves_nothing_or_everything(reference, tmp_path):
    stats = sigkill_cli_loop(reference, tmp_path, CI_CLI_KILLS, CI_SEED)
    print(stats.summary())
    assert stats.failures == [], "\n".join(stats.failures)
    assert stats.killed >= 1 and stats.survived == stats.killed, stats.summary()


def test_sigkill_while_cli_replaces_previous_output(reference, tmp_path):
    """Overwriting an earlier output: a kill mid-way leaves the old output, the new one, or none."""
    out = tmp_path / "out"
    first = cli(reference.weights, out, tmp_path / "first.stderr")
    assert first.wait(CHILD_TIMEOUT) == 0, tail(tmp_path / "first.stderr")
    assert output_problem(out, reference) is None
    proc = cli(reference.weights, out, tmp_path / "second.stderr", python_code=CLI_KILLED_WHILE_DELETING)
    code = proc.wait(CHILD_TIMEOUT)
    assert code in (0, -signal.SIGKILL), tail(tmp_path / "second.stderr")
    if out.exists():
        problem = output_problem(out, reference)
        assert problem is None, f"after a SIGKILL ({code}) while replacing it, {out} {problem}"
