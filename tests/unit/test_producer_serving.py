"""Parsing broadcast replies into per-process rows, and what counts as a confirmation."""

from __future__ import annotations

from producer.serving import (
    PromoteReport,
    ServingRow,
    is_confirmed,
    merge_replies,
    serving_rows,
    split_confirmed,
)


def reply(node: str, *procs: dict[str, object]) -> dict[str, object]:
    return {node: {"hostname": "h", "processes": list(procs)}}


def proc(pid: int, **models: tuple[str, int]) -> dict[str, object]:
    return {"pid": pid, "models": {name: {"model_version": v, "generation": g,
                                          "source": "database"}
                                   for name, (v, g) in models.items()}}


def test_a_later_reply_of_a_node_replaces_its_earlier_state() -> None:
    nodes = merge_replies([reply("w@h", proc(1, default=("v1", 1)))])
    merge_replies([reply("w@h", proc(1, default=("v2", 2)))], nodes)
    rows = serving_rows(nodes)
    assert [(r.pid, r.version, r.generation) for r in rows] == [(1, "v2", 2)]


def test_rows_cover_every_model_of_every_process_sorted() -> None:
    nodes = merge_replies([reply("b@h", proc(9, default=("v1", 1), cars=("c1", 4))),
                           reply("a@h", proc(5), proc(2, default=("v1", 1)))])
    rows = serving_rows(nodes)
    assert [(r.node, r.pid, r.model) for r in rows] == [
        ("a@h", 2, "default"), ("a@h", 5, None), ("b@h", 9, "cars"), ("b@h", 9, "default")]


def test_filtering_by_model_marks_processes_without_it_as_idle() -> None:
    nodes = merge_replies([reply("a@h", proc(1, cars=("c1", 4)), proc(2))])
    rows = serving_rows(nodes, "default")
    assert rows == [ServingRow("a@h", 1, None), ServingRow("a@h", 2, None)]


def test_malformed_replies_become_error_rows_not_crashes() -> None:
    nodes = merge_replies([{"x@h": "pong"}, {"y@h": {"hostname": "h", "processes": []}},
                           "garbage"])  # type: ignore[list-item]
    rows = serving_rows(nodes)
    assert [r.node for r in rows] == ["x@h", "y@h"]
    assert rows[0].error is not None and "unexpected reply" in rows[0].error
    assert rows[1].error == "reported no serving process"


def test_confirmation_needs_the_version_and_at_least_the_generation() -> None:
    assert is_confirmed(ServingRow("n", 1, "m", "v2", 5), "v2", 5)
    assert is_confirmed(ServingRow("n", 1, "m", "v2", 6), "v2", 5)
    assert not is_confirmed(ServingRow("n", 1, "m", "v2", 4), "v2", 5)
    assert not is_confirmed(ServingRow("n", 1, "m", "v1", 9), "v2", 5)
    assert not is_confirmed(ServingRow("n", 1, "m", "v2", None), "v2", 5)


def test_split_separates_idle_and_error_processes() -> None:
    rows = [ServingRow("n", 1, "m", "v2", 2), ServingRow("n", 2, None),
            ServingRow("n", 3, "m", "v1", 1), ServingRow("n", None, None, error="boom")]
    confirmed, unconfirmed, idle = split_confirmed(rows, "v2", 2)
    assert [r.pid for r in confirmed] == [1]
    assert [r.pid for r in idle] == [2]
    assert [r.pid for r in unconfirmed] == [3, None]


def test_report_is_ok_with_idle_processes_but_not_without_nodes() -> None:
    idle_only = PromoteReport("m", "promote", "v1", "v2", 2, nodes=["n"],
                              idle=[ServingRow("n", 2, None)])
    assert idle_only.ok and idle_only.problem() is None
    nobody = PromoteReport("m", "promote", "v1", "v2", 2)
    assert not nobody.ok
    assert nobody.problem() == ("model 'm' promoted to 'v2' (generation 2) in the database, "
                                "but no worker replied to the broadcast")
    failed = PromoteReport("m", "rollback", "v2", "v1", 3, nodes=["n"],
                           unconfirmed=[ServingRow("n", None, "m", error="load failed")])
    assert "n (load failed)" in (failed.problem() or "")
    assert "rollbackd" not in (failed.problem() or "")


def test_a_process_with_dead_letters_or_a_stopped_replay_says_so() -> None:
    """`predq serving` shows a process's prediction-log trouble (issue 12, item 4)."""
    from rich.console import Console

    from producer.tables import serving_table

    troubled = dict(proc(3, default=("v1", 1)), spooled_rows=12, dead_letter_rows=2,
                    dead_letter_file="/spool/dead-letter.jsonl",
                    replay_error="schema version 0, run `predq db upgrade`")
    rows = serving_rows(merge_replies([reply("w@h", troubled, proc(4, default=("v1", 1)))]))
    assert rows[0].prediction_log == ("12 spooled; 2 dead-lettered (/spool/dead-letter.jsonl);"
                                      " replay stopped: schema version 0, run `predq db "
                                      "upgrade`")
    assert rows[1].prediction_log is None
    console = Console(width=400, record=True)
    console.print(serving_table(rows))
    assert "2 dead-lettered" in console.export_text()
