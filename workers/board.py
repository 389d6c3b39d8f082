"""A prefork node's status board: each pool child posts what it serves to a file, and the
main process answers predq_serving / predq_promote with its children's posts.

Remote-control commands run in the node's main process, which serves nothing itself
under prefork; without the board a prefork node could never confirm a switch. The board
is a private temporary directory made by the main process before it forks (children
inherit its path), one JSON file per live child: bounded by the pool's concurrency.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_BOARD: dict[str, Any] = {}


def open_board() -> Path:
    """In the main process, before the pool forks: make the board directory."""
    path = Path(tempfile.mkdtemp(prefix="predq-board-"))
    _BOARD.update(path=path, owner=os.getpid())
    return path


def board_dir() -> Path | None:
    path = _BOARD.get("path")
    return path if isinstance(path, Path) else None


def post(status: dict[str, Any]) -> None:
    """In a pool child: replace this process's post (atomically, so readers never see
    half a file)."""
    path = board_dir()
    if path is None or _BOARD.get("owner") == os.getpid():
        return
    pid = os.getpid()
    tmp = path / f".{pid}.tmp"
    try:
        tmp.write_text(json.dumps(status, default=str))
        os.replace(tmp, path / f"{pid}.json")
    except OSError as exc:
        log.warning("could not post serving status to %s: %s", path, exc)


def withdraw() -> None:
    """In a pool child that exits: remove its post."""
    path = board_dir()
    if path is not None:
        (path / f"{os.getpid()}.json").unlink(missing_ok=True)


def read(live_pids: Iterable[int]) -> list[dict[str, Any]]:
    """In the main process: one status per live child; a child that has not posted yet
    shows as serving nothing (it loads production on first use). Posts of children that
    are gone are removed."""
    path = board_dir()
    live = sorted(set(live_pids))
    posts: dict[int, dict[str, Any]] = {}
    if path is not None:
        for file in path.glob("*.json"):
            pid = int(file.stem) if file.stem.isdigit() else None
            if pid not in live:
                file.unlink(missing_ok=True)
                continue
            try:
                posts[pid] = json.loads(file.read_text())
            except (OSError, ValueError):
                continue  # replaced while reading: the next poll sees the new post
    return [posts.get(pid) or {"pid": pid, "models": {}} for pid in live]


def close_board() -> None:
    """In the main process at shutdown: remove the board."""
    path = board_dir()
    if path is not None and _BOARD.get("owner") == os.getpid():
        shutil.rmtree(path, ignore_errors=True)
        _BOARD.clear()
