"""A new converter version never reads an entry written by an older one (online, pinned commit, offline),
and uses its own entry from then on. The machinery is tests/faults.py."""

import json
from pathlib import Path

import pytest

from convnext_hub.hub import load_pretrained, timm_hub
from convnext_hub.hub.cache import META_FILE
from tests.faults import (  # noqa: F401  (hub, local_hub, reference: fixtures)
    TAG,
    assert_close,
    bump_converter_version,
    captured_logs,
    conversions,
    entry_problem,
    hub,
    local_hub,
    logits_of,
    only_entry,
    reference,
)
from tests.hub_server import set_offline


@pytest.mark.parametrize("how", ["online", "pinned_commit", "offline"])
def test_converter_version_bump_invalidates_old_entries(hub, reference, tmp_path, monkeypatch, how):
    root = tmp_path / "cache"
    kwargs = {"revision": hub.commit} if how == "pinned_commit" else {}
    load_pretrained(TAG, cache_dir=root, **kwargs)
    old_key = reference.key
    assert only_entry(root).name == old_key

    new_version = bump_converter_version(monkeypatch)
    assert reference.key != old_key and f"-c{new_version}-" in reference.key
    used = []
    from_registry = timm_hub.from_registry

    def spy(*args, **kwargs):
        weights = from_registry(*args, **kwargs)
        used.append(Path(weights.source).name)
        return weights

    monkeypatch.setattr(timm_hub, "from_registry", spy)
    if how == "offline":
        set_offline(monkeypatch, True)
    hub.clear_log()
    with captured_logs() as messages:
        model = load_pretrained(TAG, cache_dir=root, **kwargs)
    assert used == [reference.key], f"the entry of converter version {old_key.split('-')[1]} was used: {used}"
    assert conversions(messages) == 1, messages
    assert_close(logits_of(model), reference.logits)
    new = root / "entries" / TAG / reference.key
    assert entry_problem(new, reference) is None
    assert json.loads((new / META_FILE).read_text())["converter_version"] == new_version
    assert hub.file_requests("model.safetensors", method="GET") == []  # the source came from huggingface_hub's cache

    with captured_logs() as messages:  # from now on the new entry is used as it is
        model = load_pretrained(TAG, cache_dir=root, **kwargs)
    assert used[1:] == [reference.key] and conversions(messages) == 0, (used, messages)
    assert_close(logits_of(model), reference.logits)
