"""The first load and the converter CLI refuse a checkpoint whose bytes are not what the Hub says.

A timm checkpoint is uploaded to the local Hub (`tests/hub_server.py`), which
announces its sha256 as the etag of an LFS file, as the Hub does. One byte of the
downloaded blob in huggingface_hub's cache is then altered (the blob keeps its
name, the sha256 the Hub gave): the load converts from it, the hash taken while
converting differs, and the file is refused with both hashes; no cache entry and
no temporary folder stay behind; so is a download whose bytes differ from the
sha256 the Hub announces. An unaltered blob loads, and a file the Hub
gives no sha256 for (a git file: its etag is a git blob id) is not checked.
"""

import threading
from pathlib import Path

import pytest

import convnext_hub.config
from converters.timm_to_keras import main as cli_main
from convnext_hub.hub import SourceHashMismatchError, fetch, load_pretrained
from tests.checkpoint_factory import checkpoint  # noqa: F401  (fixture)
from tests.hub_server import local_hub, set_offline, upload_timm_checkpoint  # noqa: F401  (fixture)

pytestmark = pytest.mark.backend_independent

ATTO = "convnext_atto.d2_in1k"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "convnext_hub_cache"
    monkeypatch.setattr(convnext_hub.config.current(), "cache_dir", str(path))
    return path


def _left_behind(cache_dir):
    """Every file under the convnext_hub cache but its lock files: entries, refs, temporary folders."""
    return sorted(p for p in cache_dir.rglob("*") if p.is_file() and p.suffix != ".lock") if cache_dir.exists() else []


def _altered_blob(hub, checkpoint, seed=0):
    """Uploads a random convnext_atto, downloads it into huggingface_hub's cache, flips one byte of the blob
    (in the tensor data, past the header); returns (the Hub's sha256, the blob)."""
    import huggingface_hub

    _, weights = checkpoint("convnext_atto", seed=seed)
    upload_timm_checkpoint(hub, ATTO, weights)
    path = huggingface_hub.hf_hub_download(f"timm/{ATTO}", "model.safetensors")
    [blob] = hub.cache_dir.glob("models--timm--*/blobs/*")
    assert Path(path).resolve() == blob.resolve()
    data = bytearray(blob.read_bytes())
    data[-1000] ^= 0x01
    blob.write_bytes(data)
    return blob.name, blob


@pytest.mark.parametrize("online", [True, False])
def test_altered_blob_is_refused_with_both_hashes_and_leaves_no_entry(
    local_hub, checkpoint, cache_dir, monkeypatch, online
):
    """Online the Hub's sha256 is the etag it answers now; offline, the name of the blob in huggingface_hub's cache."""
    expected, blob = _altered_blob(local_hub, checkpoint)
    if not online:
        set_offline(monkeypatch, True)
    actual = fetch.sha256_file(blob)
    assert actual != expected
    with pytest.raises(SourceHashMismatchError) as error:
        load_pretrained(ATTO, cache_dir=cache_dir)
    message = str(error.value)
    assert "\n" not in message
    assert expected in message and actual in message
    assert f"timm/{ATTO}/model.safetensors" in message and "snapshots" in message  # the file read
    assert _left_behind(cache_dir) == []
    assert not [t for t in threading.enumerate() if t.name == "convnext_hub-sha256"]


def test_a_download_that_differs_from_the_announced_sha256_is_refused(local_hub, checkpoint, cache_dir):
    """The local Hub serves bytes that differ (one byte) from the sha256 it announces: the fresh download is
    refused as the cached blob is."""
    _, weights = checkpoint("convnext_atto", seed=2)
    upload_timm_checkpoint(local_hub, ATTO, weights)
    served = local_hub.resolve(f"timm/{ATTO}").files["model.safetensors"]
    data = bytearray(served.disk_path.read_bytes())
    data[-1000] ^= 0x01
    served.disk_path.write_bytes(data)
    with pytest.raises(SourceHashMismatchError, match=f"differs from the Hub's {served.sha256}"):
        load_pretrained(ATTO, cache_dir=cache_dir)
    assert local_hub.file_requests("model.safetensors", method="GET")  # downloaded now, not from a cache
    assert _left_behind(cache_dir) == []


def test_cli_on_a_hub_name_refuses_the_altered_blob(local_hub, checkpoint, cache_dir, tmp_path, capsys):
    expected, blob = _altered_blob(local_hub, checkpoint)
    out = tmp_path / "out"
    assert cli_main([ATTO, "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "sha256" in err and expected in err and fetch.sha256_file(blob) in err
    assert not out.exists()
    assert _left_behind(cache_dir) == []


def test_unaltered_download_loads_and_is_hashed(local_hub, checkpoint, cache_dir, monkeypatch):
    """The check runs on a good file too (and passes): the sha256 it took is the Hub's."""
    _, weights = checkpoint("convnext_atto", seed=1)
    upload_timm_checkpoint(local_hub, ATTO, weights)
    verified = []
    real_verify = fetch.SourceCheck.verify

    def recording_verify(check):
        real_verify(check)
        verified.append((check.expected, check.actual))

    monkeypatch.setattr(fetch.SourceCheck, "verify", recording_verify)
    model = load_pretrained(ATTO, cache_dir=cache_dir)
    assert model.pretrained_cfg["name"] == ATTO
    expected = local_hub.resolve(f"timm/{ATTO}").files["model.safetensors"].sha256
    assert verified == [(expected, expected)]


def test_a_file_without_a_hub_sha256_is_not_checked():
    """A git file's etag is its git blob id (sha1, 40 hex digits): there is no sha256 to compare with."""
    git_file = fetch.RemoteFile("timm/x", "model.safetensors", "0" * 40, "a" * 40)
    lfs_file = fetch.RemoteFile("timm/x", "model.safetensors", "0" * 40, "b" * 64)
    assert fetch.hub_sha256(git_file) is None
    assert fetch.hub_sha256(lfs_file) == "b" * 64
