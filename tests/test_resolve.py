"""Hub downloads (mlxmodels/resolve.py) against a fake Hub: an interrupted download is resumed, never
reused as complete; a verified snapshot is used offline; what cannot be finished is named.

The fake stands for huggingface_hub at its two entry points Orchard calls (`snapshot_download`,
`HfApi().model_info`) and behaves like huggingface_hub 0.x: its cache-only lookup returns the
snapshot folder whenever it exists, complete or not.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.utils import OfflineModeIsEnabled

from mlxmodels.errors import OfflineError
from mlxmodels.resolve import download

REPO = "orchard-tests/tiny"
FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors.index.json": b'{"weight_map": {"a": "model-00001-of-00002.safetensors", '
                                    b'"b": "model-00002-of-00002.safetensors"}}',
    "model-00001-of-00002.safetensors": b"1" * 100,
    "model-00002-of-00002.safetensors": b"2" * 200,
    "tokenizer.json": b"{}",
    "README.md": b"not downloaded",
}


class FakeHub:
    def __init__(self, root: Path):
        self.commit = "c0ffee" * 6 + "beef"
        self.folder = root / "models--orchard-tests--tiny" / "snapshots" / self.commit
        self.offline = False
        self.stop_after: int | None = None  # files written before a download is interrupted
        self.listings = 0

    def snapshot_download(self, repo_id, allow_patterns=None, local_files_only=False, **kwargs):
        if local_files_only or self.offline:
            if self.folder.is_dir():
                return str(self.folder)
            raise LocalEntryNotFoundError("not in the cache")
        self.folder.mkdir(parents=True, exist_ok=True)
        written = 0
        for name, data in FILES.items():
            if name.endswith(".md") or (self.folder / name).is_file():
                continue
            if self.stop_after is not None and written == self.stop_after:
                raise KeyboardInterrupt  # Ctrl-C mid-download
            (self.folder / name).write_bytes(data)
            written += 1
        return str(self.folder)

    def model_info(self, repo_id, revision=None, files_metadata=False, **kwargs):
        if self.offline:
            raise OfflineModeIsEnabled("HF_HUB_OFFLINE is set")
        self.listings += 1
        return SimpleNamespace(sha=self.commit, siblings=[SimpleNamespace(rfilename=n, size=len(d)) for n, d in FILES.items()])


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path / "hf")
    monkeypatch.setenv("ORCHARD_CACHE_DIR", str(tmp_path / "orchard"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: fake)
    return fake


def _interrupted(hub: FakeHub, after: int) -> None:
    hub.stop_after = after
    with pytest.raises(KeyboardInterrupt):
        download(REPO)
    hub.stop_after = None


def test_an_interrupted_download_is_resumed_not_reused(hub):
    _interrupted(hub, after=2)
    path = download(REPO)
    for name, data in FILES.items():
        if not name.endswith(".md"):
            assert (path / name).read_bytes() == data, name


def test_a_verified_snapshot_is_used_without_asking_the_hub(hub):
    path = download(REPO)
    listings = hub.listings
    hub.offline = True
    assert download(REPO) == path and hub.listings == listings


def test_offline_an_incomplete_download_names_what_is_missing(hub):
    _interrupted(hub, after=2)
    hub.offline = True
    with pytest.raises(OfflineError, match=r"incomplete \(model-00001-of-00002.safetensors is missing\).*offline"):
        download(REPO)


def test_offline_a_snapshot_fetched_by_another_tool_is_used_when_its_weights_are_all_there(hub):
    hub.folder.mkdir(parents=True)
    for name, data in FILES.items():
        (hub.folder / name).write_bytes(data)
    hub.offline = True
    assert download(REPO) == hub.folder


def test_a_file_of_the_wrong_size_is_named(hub):
    path = download(REPO)
    (path / "model-00002-of-00002.safetensors").write_bytes(b"2" * 50)
    with pytest.raises(OfflineError, match=r"model-00002-of-00002.safetensors: 50 bytes where .* lists 200"):
        download(REPO)
