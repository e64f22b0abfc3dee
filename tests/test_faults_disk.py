"""A full disk while a cache entry is written: a clear error naming the cache directory, nothing valid-looking
left, and the next load (with room again) converts and caches. The machinery is tests/faults.py."""

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from convnext_hub.hub import Cache, load_pretrained
from convnext_hub.hub.cache import META_FILE
from tests.faults import (  # noqa: F401
    TAG,
    assert_close,
    audit_cache,
    hub,
    local_hub,
    logits_of,
    reference,
)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 2 MiB tmpfs (the weights are 8.6 MB) and a function that grows it to 64 MiB; root only."""
    mount = tmp_path / "tiny_fs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode(errors='replace').strip()}")

    def grow():
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)

    try:
        yield mount, grow
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("full_at", ["weights", "meta", "tmpfs"])
def test_full_disk_is_a_clear_error_and_leaves_nothing_valid(hub, reference, tmp_path, monkeypatch, request, full_at):
    """ENOSPC while the entry is written: "weights": the weights file fails as on a full disk, after
    writing part of the file; "meta": meta.json lies on /dev/full; "tmpfs": the cache is on a full tmpfs."""
    root, undo = tmp_path / "cache", []
    if full_at == "tmpfs":
        mount, make_room = request.getfixturevalue("tiny_tmpfs")
        root = mount / "cache"
    elif full_at == "weights":
        from convnext_hub.convert import conversion

        write, injected = conversion.write_safetensors, []

        def write_on_full_disk(filepath, *args, **kwargs):  # half the file, then ENOSPC
            write(filepath, *args, **kwargs)
            data = Path(filepath).read_bytes()
            Path(filepath).write_bytes(data[: len(data) // 2])
            injected.append(filepath)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(conversion, "write_safetensors", write_on_full_disk)
        undo = [(conversion, "write_safetensors", write)]
    else:
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full")
        make_dir, injected = tempfile.mkdtemp, []

        def mkdtemp_on_full_disk(*args, **kwargs):  # the entry's temp dir, with meta.json on a full device
            path = Path(make_dir(*args, **kwargs))
            if path.parent == root / "tmp" and ".discard" not in path.name:
                (path / META_FILE).symlink_to("/dev/full")
                injected.append(path)
            return os.fspath(path)

        monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp_on_full_disk)
        undo = [(tempfile, "mkdtemp", make_dir)]
    if undo:

        def make_room():
            for module, name, value in undo:
                monkeypatch.setattr(module, name, value)
            assert injected, "the fault was never injected"

    with pytest.raises(OSError) as info:
        load_pretrained(TAG, cache_dir=root)
    message = str(info.value)
    assert str(root) in message, f"the error does not name the cache directory {root}: {info.value!r}"
    assert "no space left" in message.lower(), message
    audit = audit_cache(root, reference)
    assert audit.valid == [] and audit.invalid == [], audit
    assert Cache(root).lookup(TAG, reference.key) is None

    make_room()  # space again: the next load converts and caches
    assert_close(logits_of(load_pretrained(TAG, cache_dir=root)), reference.logits)
    audit = audit_cache(root, reference)
    assert [p.name for p in audit.valid] == [reference.key] and not audit.invalid, audit
