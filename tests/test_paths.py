"""Where lib looks for things when nothing is said: the data root's default."""
from __future__ import annotations

from lib import paths


def _layout(tmp_path, monkeypatch, own: bool, beside: bool):
    repo = tmp_path / "checkout"
    repo.mkdir()
    if own:
        (repo / "data").mkdir()
    if beside:
        (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(paths, "REPO_ROOT", repo)
    monkeypatch.delenv("SAMBOOK_DATA", raising=False)
    return repo


def test_data_root_defaults_to_the_shared_data_beside_the_checkout(tmp_path, monkeypatch):
    _layout(tmp_path, monkeypatch, own=False, beside=True)
    assert paths.data_root() == (tmp_path / "shared" / "data").resolve()


def test_data_root_prefers_the_checkouts_own_data_folder(tmp_path, monkeypatch):
    repo = _layout(tmp_path, monkeypatch, own=True, beside=True)
    assert paths.data_root() == repo / "data"


def test_data_root_without_either_folder_is_the_download_target(tmp_path, monkeypatch):
    repo = _layout(tmp_path, monkeypatch, own=False, beside=False)
    assert paths.data_root() == repo / "data"


def test_sambook_data_and_the_argument_win_over_the_default(tmp_path, monkeypatch):
    _layout(tmp_path, monkeypatch, own=False, beside=True)
    monkeypatch.setenv("SAMBOOK_DATA", str(tmp_path / "elsewhere"))
    assert paths.data_root() == (tmp_path / "elsewhere").resolve()
    assert paths.data_root(tmp_path / "arg") == (tmp_path / "arg").resolve()
