"""check_regular_file: the lstat check every reader makes before it opens a file."""

import os

import pytest

from bagel.errors import InputError
from workbench.files import check_regular_file


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_text("hello")
    (tmp_path / "outside.txt").write_text("secret")
    (root / "out").symlink_to(tmp_path / "outside.txt")
    (root / "in").symlink_to(root / "a.txt")
    (root / "dev").symlink_to("/dev/zero")
    os.mkfifo(root / "fifo")
    (root / "sub").mkdir()
    return root


def test_regular_file_inside_gives_its_size(folder):
    assert check_regular_file(folder / "a.txt", folder, max_bytes=5) == 5


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("out", "symbolic link that leaves the folder"),
        ("dev", "symbolic link that leaves the folder"),
        ("in", "a symbolic link"),
        ("fifo", "not a regular file (a FIFO)"),
        ("sub", "not a regular file (a folder)"),
        ("missing", "no such file"),
    ],
)
def test_refusals_name_what_the_file_is(folder, name, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_regular_file(folder / name, folder)


def test_size_and_containment(folder, tmp_path):
    with pytest.raises(InputError, match="5 bytes, more than the 4 allowed"):
        check_regular_file(folder / "a.txt", folder, max_bytes=4)
    with pytest.raises(InputError, match="lies outside the folder"):
        check_regular_file(tmp_path / "outside.txt", folder)
