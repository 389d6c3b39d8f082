-- predq monitoring views (PostgreSQL). Apply with:
--   psql "$DATABASE_URL" -f sql/monitoring.sql
-- Re-runnable: every view is CREATE OR REPLACE.

-- Predictions per model version per day (the day of prediction_time, UTC as predq logs it).
-- Both prediction views read model_prediction_rollups, kept exact by triggers on
-- model_predictions (so they count the seed's plain INSERTs too) and outliving the
-- partitions that retention drops: time proportional to versions x hours, not rows.
CREATE OR REPLACE VIEW predq_daily_prediction_counts AS
SELECT
    hour::date AS day,
    model_name,
    model_version,
    SUM(predictions)::bigint AS prediction_count,
    SUM(sum_predicted) / NULLIF(SUM(predictions), 0) AS avg_prediction
FROM model_prediction_rollups
GROUP BY hour::date, model_name, model_version
HAVING SUM(predictions) > 0;

-- Accuracy per model version where actuals exist: MAE and RMSE over the labelled rows,
-- label coverage = labelled rows / all rows of that version.
CREATE OR REPLACE VIEW predq_version_accuracy AS
SELECT
    model_name,
    model_version,
    SUM(predictions)::bigint AS prediction_count,
    SUM(labelled)::bigint AS labelled_count,
    SUM(labelled)::float8 / SUM(predictions) AS label_coverage,
    SUM(sum_abs_error) / NULLIF(SUM(labelled), 0) AS mean_absolute_error,
    SQRT(GREATEST(SUM(sum_sq_error), 0) / NULLIF(SUM(labelled), 0)) AS root_mean_squared_error
FROM model_prediction_rollups
GROUP BY model_name, model_version
HAVING SUM(predictions) > 0;

-- Artifact sizes per model type, and one total row (is_total, model_type NULL).
CREATE OR REPLACE VIEW predq_model_sizes AS
SELECT
    model_type,
    GROUPING(model_type) = 1 AS is_total,
    COUNT(*) AS model_count,
    SUM(model_size_bytes) AS total_bytes,
    SUM(model_size_bytes) / 1024.0 / 1024.0 AS total_size_mb,
    AVG(model_size_bytes) / 1024.0 AS avg_size_kb
FROM model_artifacts
GROUP BY ROLLUP (model_type);

-- The seed guide's queries, unchanged, for reference:
--
-- SELECT SUM(model_size_bytes) / 1024.0 / 1024.0 as total_size_mb, COUNT(*) as total_models
-- FROM model_artifacts;
--
-- SELECT model_type, COUNT(*) as count, AVG(model_size_bytes) / 1024.0 as avg_size_kb
-- FROM model_artifacts GROUP BY model_type;
--
-- SELECT model_version, COUNT(*) as prediction_count, AVG(predicted_value) as avg_prediction
-- FROM model_predictions WHERE prediction_time > NOW() - INTERVAL '1 day'
-- GROUP BY model_version;
--
-- SELECT model_version, COUNT(*) as predictions_with_actual,
--        AVG(ABS(predicted_value - actual_value)) as mean_absolute_error
-- FROM model_predictions WHERE actual_value IS NOT NULL GROUP BY model_version;
