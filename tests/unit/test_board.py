"""The prefork status board: children post, the main process reads live children only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers import board


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setattr(board, "_BOARD", {})
    path = board.open_board()
    yield path
    board.close_board()
    assert not path.exists()


def test_posts_of_live_children_are_read_and_dead_ones_removed(opened: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setitem(board._BOARD, "owner", -1)  # act as a child of another main
    board.post({"pid": os.getpid(), "models": {"default": {"model_version": "v2"}}})
    (opened / "999999.json").write_text('{"pid": 999999, "models": {}}')
    rows = {row["pid"]: row for row in board.read([os.getpid(), 12345])}
    assert rows == {os.getpid(): {"pid": os.getpid(),
                                  "models": {"default": {"model_version": "v2"}}},
                    12345: {"pid": 12345, "models": {}}}
    assert not (opened / "999999.json").exists()
    board.withdraw()
    assert board.read([os.getpid()]) == [{"pid": os.getpid(), "models": {}}]
    monkeypatch.setitem(board._BOARD, "owner", os.getpid())


def test_the_main_process_never_posts(opened: Path) -> None:
    board.post({"pid": os.getpid(), "models": {}})
    assert list(opened.iterdir()) == []
