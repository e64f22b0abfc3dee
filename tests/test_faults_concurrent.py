"""Four processes load one uncached checkpoint at once, with file locks and with every lock a no-op:
all get timm's logits, the cache ends with one complete entry. The machinery is tests/faults.py."""

import pytest

from tests.faults import concurrent_loads, hub, local_hub, reference  # noqa: F401  (fixtures)


@pytest.mark.parametrize("no_locks", [False, True], ids=["file_locks", "locks_are_no_ops"])
def test_four_processes_load_one_uncached_checkpoint(hub, reference, tmp_path, no_locks):
    """All get the reference logits; one verified entry, no temp dir left; one conversion with locks."""
    problems = concurrent_loads(reference, hub, hub.cache_dir, tmp_path, count=4, no_locks=no_locks)
    assert problems == [], "\n".join(problems)
