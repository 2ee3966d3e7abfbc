"""The watched-file helper: one read per replacement, a bounded look rate, no stale value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy.watchedfile import WatchedFile
from tests.support.clock import FakeClock


class Parses:
    """A parse function that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, content: bytes) -> str:
        self.calls += 1
        if content == b"bad":
            raise ValueError("unparsable")
        return content.decode()


def swap(path: Path, content: str) -> None:
    """Replace the file the way an atomic writer does, keeping size and mtime."""
    staging = path.with_name(path.name + ".new")
    staging.write_text(content)
    os.utime(staging, ns=(1_000_000_000, 1_000_000_000))
    os.replace(staging, path)


def test_read_once_until_swapped(tmp_path: Path) -> None:
    path = tmp_path / "f"
    swap(path, "one")
    parse = Parses()
    watched = WatchedFile(str(path), parse)
    assert [watched.current() for _ in range(3)] == ["one"] * 3
    swap(path, "two")  # same size, same mtime: only the inode tells
    assert watched.current() == "two"
    assert parse.calls == 2


def test_looks_no_more_often_than_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("one")
    clock = FakeClock(0.0)
    watched = WatchedFile(str(path), Parses(), min_interval=1.0, clock=clock)
    assert watched.current() == "one"
    path.unlink()
    assert watched.current() == "one"
    clock.advance(1.0)
    with pytest.raises(FileNotFoundError):
        watched.current()
    path.write_text("two")
    with pytest.raises(FileNotFoundError):  # the last outcome, until the interval is over
        watched.current()
    clock.advance(1.0)
    assert watched.current() == "two"


def test_a_file_that_turns_bad_hides_nothing(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("one")
    parse = Parses()
    watched = WatchedFile(str(path), parse)
    watched.current()
    swap(path, "bad")
    for _ in range(2):  # read again each time: the error is not remembered
        with pytest.raises(ValueError, match="unparsable"):
            watched.current()
    assert parse.calls == 3
