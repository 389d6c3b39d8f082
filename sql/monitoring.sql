-- predq monitoring views (PostgreSQL). Apply with:
--   psql "$DATABASE_URL" -f sql/monitoring.sql
-- Re-runnable: every view is CREATE OR REPLACE. They read only the seed's columns plus
-- model_name, so they also work on rows written by the seed's plain INSERTs.

-- Predictions per model version per day (the day of prediction_time, server time zone).
CREATE OR REPLACE VIEW predq_daily_prediction_counts AS
SELECT
    prediction_time::date AS day,
    model_name,
    model_version,
    COUNT(*) AS prediction_count,
    AVG(predicted_value) AS avg_prediction
FROM model_predictions
GROUP BY prediction_time::date, model_name, model_version;

-- Accuracy per model version where actuals exist: MAE and RMSE over the labelled rows,
-- label coverage = labelled rows / all rows of that version.
CREATE OR REPLACE VIEW predq_version_accuracy AS
SELECT
    model_name,
    model_version,
    COUNT(*) AS prediction_count,
    COUNT(actual_value) AS labelled_count,
    COUNT(actual_value)::float8 / COUNT(*) AS label_coverage,
    AVG(ABS(predicted_value - actual_value)) AS mean_absolute_error,
    SQRT(AVG((predicted_value - actual_value) ^ 2)) AS root_mean_squared_error
FROM model_predictions
GROUP BY model_name, model_version;

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
