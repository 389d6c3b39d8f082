"""The seed guide's Python usage examples, run as written (imports from modelstore), on
SQLite and Postgres, plus the seed's plain INSERT patterns."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import joblib
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, text

from producer.sample import FEATURES, make_cars, train_seed_dict

SEED_FEATURES = {
    "year": 2020,
    "mileage": 50000,
    "brand": "Toyota",
    "condition": "Good",
    "engine_size": 2.5,
    "transmission": "Automatic",
}


def _seed_predict(model_artifact: dict[str, object], row: dict[str, object]) -> float:
    frame = pd.DataFrame([row])[list(FEATURES)]
    x = model_artifact["preprocessor"].transform(frame)  # type: ignore[attr-defined]
    scaled = model_artifact["scaler"].transform(x)  # type: ignore[attr-defined]
    return float(model_artifact["model"].predict(scaled)[0])  # type: ignore[attr-defined]


def test_training_storing_and_loading_examples(seed_env: str,
                                               raw_engine: Callable[[str], Engine]) -> None:
    from modelstore import ModelEvaluationDB, ModelLoader

    model_artifact = train_seed_dict(make_cars(300, seed=2), n_estimators=3, max_depth=3)
    # "Training & Storing Models", as written.
    with ModelEvaluationDB() as db:
        # Serialize model to bytes
        model_bytes = io.BytesIO()
        joblib.dump(model_artifact, model_bytes)
        model_binary = model_bytes.getvalue()

        # Store in database
        db.store_model(
            run_id="mlflow-run-id",
            model_version="20260105_143022",
            model_type="RandomForest",
            model_binary=model_binary,
            accuracy=0.85,
            rmse=3500.25,
            r2=0.92,
            is_production=True  # Mark as production
        )

    # "Option 1: Using ModelLoader class", as written.
    loader = ModelLoader()
    prod_model = loader.load_production_model()
    v1_model = loader.load_model_by_version("20260105_143022")
    latest_model = loader.load_latest_model()
    models = loader.list_available_models(limit=10)
    loader.close()

    assert set(prod_model) == {"model", "preprocessor", "scaler"}
    assert loader.fallback_used is False and loader.source == "database"
    expected = _seed_predict(model_artifact, SEED_FEATURES)
    for artifact in (prod_model, v1_model, latest_model):
        assert _seed_predict(artifact, SEED_FEATURES) == pytest.approx(expected)
    assert [m["model_version"] for m in models] == ["20260105_143022"]
    assert models[0]["is_production"] is True
    assert models[0]["model_size_bytes"] == len(model_binary)

    # "Option 2: Using convenience functions" and "Option 3" (the seed dict's keys).
    from modelstore import list_models, load_model_by_version, load_production_model

    model_artifact_loaded = load_production_model()
    models_list = list_models(limit=5)
    assert [m["model_version"] for m in models_list] == ["20260105_143022"]
    assert set(load_model_by_version("20260105_143022")) == {"model", "preprocessor", "scaler"}
    if model_artifact_loaded:
        model = model_artifact_loaded['model']
        preprocessor = model_artifact_loaded['preprocessor']
        scaler = model_artifact_loaded['scaler']
    assert np.isfinite(model.predict(scaler.transform(preprocessor.transform(
        pd.DataFrame([SEED_FEATURES])[list(FEATURES)])))).all()

    # The seed's run and long-format metrics came along.
    with raw_engine(seed_env).connect() as conn:
        metrics = dict(conn.execute(text(
            "SELECT metric_name, metric_value FROM model_metrics WHERE run_id = 'mlflow-run-id'"
        )).all())
    assert metrics == {"accuracy": 0.85, "rmse": 3500.25, "r2": 0.92}


def test_list_promote_status_and_prediction_examples(
        seed_env: str, pipeline_bytes: bytes, pipeline_v2_bytes: bytes,
        capsys: pytest.CaptureFixture[str]) -> None:
    from modelstore import ModelEvaluationDB

    with ModelEvaluationDB() as db:
        db.store_model(run_id="mlflow-run-1", model_version="20260104_090000",
                       model_type="RandomForest", model_binary=pipeline_bytes, r2=0.9,
                       is_production=True)
        db.store_model(run_id="mlflow-run-2", model_version="20260105_143022",
                       model_type="RandomForest", model_binary=pipeline_v2_bytes, r2=0.92)

    # "List Available Models", as written.
    with ModelEvaluationDB() as db:
        models = db.list_models(limit=10)

        for model in models:
            print(f"Version: {model['model_version']}")
            print(f"Type: {model['model_type']}")
            print(f"R² Score: {model['r2_score']}")
            print(f"Production: {model['is_production']}")
            print(f"Created: {model['created_at']}")
            print("---")
    listing = capsys.readouterr().out
    assert listing.index("Version: 20260105_143022") < listing.index("Version: 20260104_090000")
    assert "Production: True" in listing and "Production: False" in listing

    # "Promote Model to Production", as written.
    with ModelEvaluationDB() as db:
        # Promote specific version to production
        db.set_production_model("20260105_143022")
        print("✓ Model promoted to production")

    # "Check Model Status", as written.
    with ModelEvaluationDB() as db:
        models = db.list_models(limit=20)

        print("Production Model:")
        prod = [m for m in models if m['is_production']]
        if prod:
            print(f"  v{prod[0]['model_version']}")
            print(f"  R² = {prod[0]['r2_score']}")

        print("\nAll Models:")
        for m in models:
            print(f"  v{m['model_version']}: "
                  f"R²={m['r2_score']}, "
                  f"Size={m['model_size_bytes']/1024:.1f}KB")
    status = capsys.readouterr().out
    assert "Production Model:\n  v20260105_143022\n  R² = 0.92\n" in status
    assert f"Size={len(pipeline_bytes) / 1024:.1f}KB" in status

    # "Storing Predictions", as written.
    with ModelEvaluationDB() as db:
        db.store_prediction(
            model_version="20260105_143022",
            input_features={
                "year": 2020,
                "mileage": 50000,
                "brand": "Toyota",
                "condition": "Good",
                "engine_size": 2.5,
                "transmission": "Automatic"
            },
            predicted_value=22500.50,
            actual_value=23000.00,  # Optional
            confidence_score=0.95    # Optional
        )
        stats = db.prediction_stats()
    assert stats[0]["model_version"] == "20260105_143022"
    assert stats[0]["predictions"] == 1 and stats[0]["mae"] == pytest.approx(499.5)

    # "Troubleshooting: check database connection", as written.
    try:
        with ModelEvaluationDB() as db:
            print("✓ Database connection OK")
    except Exception as e:  # noqa: BLE001 - the seed's own snippet
        print(f"✗ Database error: {e}")
    assert "✓ Database connection OK" in capsys.readouterr().out


def test_seed_plain_inserts_still_work(seed_env: str, pipeline_bytes: bytes,
                                      raw_engine: Callable[[str], Engine]) -> None:
    """The seed's INSERTs name only the seed's columns; predq's additions are defaulted."""
    from modelstore import ModelEvaluationDB

    ModelEvaluationDB()  # creates the schema on first use
    with raw_engine(seed_env).begin() as conn:
        conn.execute(text(
            "INSERT INTO model_artifacts (run_id, model_version, model_type, model_binary, "
            "model_size_bytes, accuracy_score, rmse_score, r2_score, is_production) VALUES "
            "(:run, :version, 'RandomForest', :blob, :size, 0.85, 3500.25, 0.92, FALSE)"),
            {"run": "mlflow-run-id", "version": "20260105_143022", "blob": pipeline_bytes,
             "size": len(pipeline_bytes)})
        conn.execute(text(
            "INSERT INTO model_predictions (model_version, input_features, predicted_value, "
            "actual_value, confidence_score) VALUES (:version, :features, 22500.5, 23000.0, "
            "0.95)"), {"version": "20260105_143022", "features": json.dumps(SEED_FEATURES)})
        conn.execute(text(
            "INSERT INTO model_predictions (model_version, input_features, predicted_value) "
            "VALUES (:version, :features, 21000.0)"),
            {"version": "20260105_143022", "features": json.dumps(SEED_FEATURES)})
        row = conn.execute(text(
            "SELECT model_name, serialization_format, sha256, is_production FROM "
            "model_artifacts")).one()
        predictions = conn.execute(text(
            "SELECT model_name, request_id FROM model_predictions ORDER BY id")).all()
    assert tuple(row) == ("default", "joblib", None, False)
    assert [tuple(p) for p in predictions] == [("default", None), ("default", None)]
    with ModelEvaluationDB() as db:
        listed = db.list_models()
        stats = db.prediction_stats()
    assert listed[0]["model_version"] == "20260105_143022"
    assert stats[0]["predictions"] == 2 and stats[0]["labelled"] == 1
