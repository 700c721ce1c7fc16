"""`check_job`: every user error about the outputs is found in seconds, before any work, and the
checks themselves leave nothing behind but the (empty) output folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipelines.checks import check_job
from pipelines.config import PipelineConfig, load_config
from pipelines.errors import StorageError
from pipelines.generate.commit import commit, resolve_output


def _cfg(tmp: Path, *overrides: str) -> PipelineConfig:
    return load_config(None, [f"output_dir={tmp / 'job'}", f"train.storage_path={tmp / 'runs'}", *overrides])


def commit_dataset(url: str) -> None:
    """Commit an (empty) dataset at `url` through the real commit protocol: card, manifest, `_SUCCESS`."""
    commit(resolve_output(url, "error"), {"rows": 0, "files": []}, "# empty\n")


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_fresh_directories_pass_and_only_empty_folders_are_created(tmp_path):
    """A first run passes, returns where the dataset goes, and leaves no probe file anywhere."""
    cfg = _cfg(tmp_path)
    checked = check_job(cfg)
    assert checked.dataset_dir == cfg.dataset_dir == str(tmp_path / "job" / "synthetic")
    assert _files(tmp_path) == {}
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "job",
        "job/synthetic",
        "runs",
    ]


def test_new_version_output_returns_the_next_version_folder(tmp_path):
    """With `generate.if_exists=new_version` the dataset goes to `v1/` (then `v2/`...)."""
    out = tmp_path / "versions"
    cfg = _cfg(tmp_path, f"generate.output={out}", "generate.if_exists=new_version")
    assert check_job(cfg).dataset_dir == f"{out}/v1"
    commit_dataset(f"{out}/v1")
    assert check_job(cfg).dataset_dir == f"{out}/v2"


def test_existing_committed_dataset_with_if_exists_error_is_refused_untouched(tmp_path):
    """A re-run onto a committed dataset names `generate.if_exists`, and changes none of its files."""
    cfg = _cfg(tmp_path)
    commit_dataset(cfg.dataset_dir)
    before = _files(tmp_path)
    assert set(before) == {"job/synthetic/_SUCCESS", "job/synthetic/manifest.json", "job/synthetic/README.md"}
    with pytest.raises(StorageError, match=r"generate\.if_exists=overwrite") as err:
        check_job(cfg)
    assert cfg.dataset_dir in str(err.value)
    assert _files(tmp_path) == before  # no probe file left, nothing removed


def test_overwrite_accepts_the_committed_dataset_without_removing_it(tmp_path):
    """`if_exists=overwrite` passes the check, but the old dataset is only removed later, by the job
    (after its own version is committed)."""
    cfg = _cfg(tmp_path, "generate.if_exists=overwrite")
    commit_dataset(cfg.dataset_dir)
    before = _files(tmp_path)
    assert check_job(cfg).dataset_dir == f"{cfg.dataset_dir}/v1"
    assert _files(tmp_path) == before


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    """`output_dir` pointing at a file: a one-line StorageError naming output_dir, not a traceback later."""
    (tmp_path / "job").write_text("not a folder")
    with pytest.raises(StorageError, match=r"^output_dir '.*job' is not writable"):
        check_job(_cfg(tmp_path))
    assert (tmp_path / "job").read_text() == "not a folder"


def test_unwritable_checkpoint_storage_is_refused(tmp_path):
    """`train.storage_path` that cannot be created (under a file) is named before training starts."""
    (tmp_path / "blocker").write_text("x")
    cfg = _cfg(tmp_path, f"train.storage_path={tmp_path / 'blocker' / 'runs'}")
    with pytest.raises(StorageError, match=r"^train\.storage_path '.*blocker/runs' is not writable"):
        check_job(cfg)


def test_checks_follow_what_the_job_does(tmp_path):
    """No training: the checkpoint storage is not checked; no generation: the dataset output is not."""
    (tmp_path / "blocker").write_text("x")
    cfg = _cfg(tmp_path, f"train.storage_path={tmp_path / 'blocker' / 'runs'}")
    commit_dataset(cfg.dataset_dir)
    assert check_job(cfg, train=False, generate=False).dataset_dir is None
    with pytest.raises(StorageError, match=r"generate\.if_exists"):
        check_job(cfg, train=False)
    with pytest.raises(StorageError, match=r"train\.storage_path"):
        check_job(cfg, generate=False)
    local = _cfg(tmp_path, f"train.storage_path={tmp_path / 'blocker' / 'runs'}", "train.backend=local")
    assert check_job(local, generate=False).dataset_dir is None  # no Ray: no Ray storage to check


def test_checking_a_new_version_output_does_not_take_the_version(tmp_path):
    """The checks say where the dataset will go; checking again (the flow re-checks what the CLI
    checked) and the job itself must then agree."""
    out = tmp_path / "versions"
    cfg = _cfg(tmp_path, f"generate.output={out}", "generate.if_exists=new_version")
    first = check_job(cfg).dataset_dir
    assert check_job(cfg).dataset_dir == first == f"{out}/v1"
    assert resolve_output(cfg.dataset_dir, "new_version").url == first


@pytest.mark.parametrize("command", ["train", "generate"])
def test_output_dir_that_is_a_file_is_one_line_from_every_command(tmp_path, capsys, command):
    """`vaeaug train` and `generate` write config.yaml before any check ran: a file there was a
    FileExistsError traceback. Now: one line naming output_dir, exit 2, the file untouched.
    (`vaeaug run` goes through `check_job`, above.)"""
    from pipelines.cli import main

    blocker = tmp_path / "job"
    blocker.write_text("not a folder")
    code = main([command, f"output_dir={blocker}", "train.backend=local"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"output_dir '{blocker}' is not writable (it is a file, not a folder)" in err
    assert blocker.read_text() == "not a folder"


def test_generate_only_checks_refuse_a_file_as_output_dir(tmp_path):
    (tmp_path / "job").write_text("not a folder")
    with pytest.raises(StorageError, match=r"^output_dir '.*job' is not writable \(it is a file"):
        check_job(_cfg(tmp_path), train=False)
