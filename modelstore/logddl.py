"""The prediction log's DDL beyond table metadata: the default partition and the triggers
that keep `model_prediction_rollups` exact.

Why triggers: every write path changes the rollups in the same statement and the same
transaction as the rows, whoever writes (predq's COPY, the seed's plain INSERT, a backfill
UPDATE, an ad-hoc DELETE). On Postgres they are statement-level with transition tables,
so a 1,000-row COPY costs one GROUP BY and one upsert of a few rollup rows, not 1,000
upserts. The rollups are keyed (model_name, model_version, role, hour of prediction_time).

What they cannot see: writes straight into a partition (`INSERT INTO
model_predictions_p20260101`), TRUNCATE, and rows loaded with triggers disabled. After
any of those run `predq db refresh-rollups`.
"""

from __future__ import annotations

DEFAULT_PARTITION = "model_predictions_default"

_PG_AGG = """
    SELECT model_name, model_version, role, date_trunc('hour', prediction_time) AS hour,
           SUM(n) AS predictions, SUM(l) AS labelled, SUM(p) AS sum_predicted,
           SUM(ae) AS sum_abs_error, SUM(se) AS sum_sq_error,
           MIN(t) AS first_time, MAX(t) AS last_time
    FROM ({rows}) AS d
    GROUP BY 1, 2, 3, 4
    HAVING SUM(n) <> 0 OR SUM(l) <> 0 OR SUM(p) <> 0 OR SUM(ae) <> 0 OR SUM(se) <> 0
    ORDER BY 1, 2, 3, 4"""
# Signed contributions: +1 per new row, -1 per old row; first/last only from new rows.
_PG_NEW = ("SELECT model_name, model_version, role, prediction_time, 1 AS n, "
           "(actual_value IS NOT NULL)::int AS l, predicted_value AS p, "
           "COALESCE(ABS(predicted_value - actual_value), 0) AS ae, "
           "COALESCE((predicted_value - actual_value) ^ 2, 0) AS se, prediction_time AS t "
           "FROM new_rows")
_PG_OLD = ("SELECT model_name, model_version, role, prediction_time, -1 AS n, "
           "-(actual_value IS NOT NULL)::int AS l, -predicted_value AS p, "
           "-COALESCE(ABS(predicted_value - actual_value), 0) AS ae, "
           "-COALESCE((predicted_value - actual_value) ^ 2, 0) AS se, NULL::timestamp AS t "
           "FROM old_rows")
# ORDER BY in the aggregate: concurrent writers lock rollup rows in one order (no deadlock).
_PG_UPSERT = """
    INSERT INTO model_prediction_rollups AS r (model_name, model_version, role, hour,
        predictions, labelled, sum_predicted, sum_abs_error, sum_sq_error, first_time,
        last_time)
    {agg}
    ON CONFLICT (model_name, model_version, role, hour) DO UPDATE SET
        predictions = r.predictions + EXCLUDED.predictions,
        labelled = r.labelled + EXCLUDED.labelled,
        sum_predicted = r.sum_predicted + EXCLUDED.sum_predicted,
        sum_abs_error = r.sum_abs_error + EXCLUDED.sum_abs_error,
        sum_sq_error = r.sum_sq_error + EXCLUDED.sum_sq_error,
        first_time = LEAST(r.first_time, EXCLUDED.first_time),
        last_time = GREATEST(r.last_time, EXCLUDED.last_time)"""


def _pg_function(name: str, rows: str) -> str:
    body = _PG_UPSERT.format(agg=_PG_AGG.format(rows=rows))
    return (f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN{body};\n    RETURN NULL;\nEND $$")


PG_LOG_DDL: tuple[str, ...] = (
    f"CREATE TABLE IF NOT EXISTS {DEFAULT_PARTITION} PARTITION OF model_predictions DEFAULT",
    _pg_function("predq_rollup_insert", _PG_NEW),
    _pg_function("predq_rollup_update", f"{_PG_NEW} UNION ALL {_PG_OLD}"),
    _pg_function("predq_rollup_delete", _PG_OLD),
    "CREATE TRIGGER predq_rollup_insert AFTER INSERT ON model_predictions "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION predq_rollup_insert()",
    "CREATE TRIGGER predq_rollup_update AFTER UPDATE ON model_predictions "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION predq_rollup_update()",
    "CREATE TRIGGER predq_rollup_delete AFTER DELETE ON model_predictions "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION predq_rollup_delete()",
)


def _sqlite_upsert(row: str, sign: str, times: bool) -> str:
    err = f"({row}.predicted_value - {row}.actual_value)"
    first = f"{row}.prediction_time" if times else "NULL"
    return f"""
    INSERT INTO model_prediction_rollups (model_name, model_version, role, hour, predictions,
        labelled, sum_predicted, sum_abs_error, sum_sq_error, first_time, last_time)
    VALUES ({row}.model_name, {row}.model_version, {row}.role,
        strftime('%Y-%m-%d %H:00:00.000000', {row}.prediction_time), {sign}1,
        {sign}({row}.actual_value IS NOT NULL), {sign}{row}.predicted_value,
        {sign}COALESCE(ABS({err}), 0), {sign}COALESCE({err} * {err}, 0), {first}, {first})
    ON CONFLICT (model_name, model_version, role, hour) DO UPDATE SET
        predictions = predictions + excluded.predictions,
        labelled = labelled + excluded.labelled,
        sum_predicted = sum_predicted + excluded.sum_predicted,
        sum_abs_error = sum_abs_error + excluded.sum_abs_error,
        sum_sq_error = sum_sq_error + excluded.sum_sq_error,
        first_time = COALESCE(MIN(first_time, excluded.first_time), first_time,
                              excluded.first_time),
        last_time = COALESCE(MAX(last_time, excluded.last_time), last_time,
                             excluded.last_time);"""


# SQLite (the demo): row-level triggers, the same rollups.
SQLITE_LOG_DDL: tuple[str, ...] = (
    "CREATE TRIGGER IF NOT EXISTS predq_rollup_insert AFTER INSERT ON model_predictions "
    f"BEGIN {_sqlite_upsert('NEW', '', True)} END",
    "CREATE TRIGGER IF NOT EXISTS predq_rollup_update AFTER UPDATE ON model_predictions "
    f"BEGIN {_sqlite_upsert('OLD', '-', False)} {_sqlite_upsert('NEW', '', True)} END",
    "CREATE TRIGGER IF NOT EXISTS predq_rollup_delete AFTER DELETE ON model_predictions "
    f"BEGIN {_sqlite_upsert('OLD', '-', False)} END",
)

PG_TRIGGERS = ("predq_rollup_insert", "predq_rollup_update", "predq_rollup_delete")
