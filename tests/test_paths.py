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


def test_a_download_never_lands_in_the_shared_data_beside_the_checkout(tmp_path, monkeypatch):
    repo = _layout(tmp_path, monkeypatch, own=False, beside=True)
    assert paths.download_root() == repo / "data"            # reading would use ../shared/data
    monkeypatch.setenv("SAMBOOK_DATA", str(tmp_path / "mine"))
    assert paths.download_root() == (tmp_path / "mine").resolve()


def test_the_cli_sends_a_download_to_the_checkouts_data_folder(tmp_path, monkeypatch):
    """`check-data --download` without --data-root asks find_source for <repo>/data, not the shared copy."""
    from lib import cli
    repo = _layout(tmp_path, monkeypatch, own=False, beside=True)
    seen = {}

    def fake_find_source(dataset, root, sources, download):
        seen.update(root=root, download=download)
        return "official", repo / "data" / "cifar-10-batches-py"
    import lib.data
    monkeypatch.setattr(lib.data, "find_source", fake_find_source)
    assert cli.main(["check-data", "--profile", "smoke", "--download"]) == 0
    assert seen == {"root": str(repo / "data"), "download": True}
