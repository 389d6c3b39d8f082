-- predq schema version 1 (before the partitioned log), kept for the upgrade test and bench/log_bench.py.
-- (Generated then by `make schema`; frozen now: do not regenerate.)

CREATE TABLE model_artifacts (
	id SERIAL NOT NULL, 
	run_id VARCHAR(255) NOT NULL, 
	model_version VARCHAR(50) NOT NULL, 
	model_type VARCHAR(100) NOT NULL, 
	model_binary BYTEA NOT NULL, 
	model_size_bytes INTEGER, 
	accuracy_score FLOAT, 
	rmse_score FLOAT, 
	r2_score FLOAT, 
	is_production BOOLEAN DEFAULT false, 
	deployment_date TIMESTAMP WITHOUT TIME ZONE, 
	created_at TIMESTAMP WITHOUT TIME ZONE DEFAULT CURRENT_TIMESTAMP, 
	updated_at TIMESTAMP WITHOUT TIME ZONE DEFAULT CURRENT_TIMESTAMP, 
	model_name VARCHAR(100) DEFAULT 'default' NOT NULL, 
	sha256 VARCHAR(64), 
	serialization_format VARCHAR(20) DEFAULT 'joblib' NOT NULL, 
	signature VARCHAR(128), 
	feature_schema JSONB, 
	PRIMARY KEY (id), 
	UNIQUE (run_id, model_version), 
	CONSTRAINT uq_model_artifacts_name_version UNIQUE (model_name, model_version)
);

ALTER TABLE model_artifacts ALTER COLUMN model_binary SET STORAGE EXTERNAL;

CREATE INDEX idx_model_artifacts_is_production ON model_artifacts (is_production);

CREATE INDEX idx_model_artifacts_model_version ON model_artifacts (model_version);

CREATE INDEX idx_model_artifacts_run_id ON model_artifacts (run_id);

CREATE UNIQUE INDEX uq_model_artifacts_one_production ON model_artifacts (model_name) WHERE is_production;

CREATE TABLE model_predictions (
	id SERIAL NOT NULL, 
	model_version VARCHAR(50) NOT NULL, 
	input_features JSONB NOT NULL, 
	predicted_value FLOAT NOT NULL, 
	actual_value FLOAT, 
	confidence_score FLOAT, 
	prediction_time TIMESTAMP WITHOUT TIME ZONE DEFAULT CURRENT_TIMESTAMP, 
	created_at TIMESTAMP WITHOUT TIME ZONE DEFAULT CURRENT_TIMESTAMP, 
	request_id VARCHAR(128), 
	model_name VARCHAR(100) DEFAULT 'default' NOT NULL, 
	model_sha256 VARCHAR(64), 
	actual_time TIMESTAMP WITHOUT TIME ZONE, 
	PRIMARY KEY (id), 
	UNIQUE (request_id)
);

CREATE INDEX idx_model_predictions_model_version ON model_predictions (model_version);

CREATE INDEX idx_model_predictions_prediction_time ON model_predictions (prediction_time);

CREATE TABLE model_runs (
	run_id VARCHAR(255) NOT NULL, 
	model_name VARCHAR(100) DEFAULT 'default' NOT NULL, 
	source VARCHAR(255), 
	created_at TIMESTAMP WITHOUT TIME ZONE DEFAULT CURRENT_TIMESTAMP, 
	PRIMARY KEY (run_id)
);

CREATE TABLE predq_schema (
	id SERIAL NOT NULL, 
	version INTEGER NOT NULL, 
	applied_at TIMESTAMP WITHOUT TIME ZONE DEFAULT CURRENT_TIMESTAMP, 
	PRIMARY KEY (id)
);

CREATE TABLE promotion_history (
	id SERIAL NOT NULL, 
	model_name VARCHAR(100) NOT NULL, 
	from_version VARCHAR(50), 
	to_version VARCHAR(50) NOT NULL, 
	generation BIGINT NOT NULL, 
	action VARCHAR(20) NOT NULL, 
	promoted_by VARCHAR(255), 
	reason TEXT, 
	promoted_at TIMESTAMP WITHOUT TIME ZONE DEFAULT CURRENT_TIMESTAMP, 
	PRIMARY KEY (id)
);

CREATE INDEX idx_promotion_history_model ON promotion_history (model_name, id);

CREATE TABLE model_metrics (
	id SERIAL NOT NULL, 
	run_id VARCHAR(255) NOT NULL, 
	metric_name VARCHAR(100) NOT NULL, 
	metric_value FLOAT NOT NULL, 
	metric_type VARCHAR(50) DEFAULT 'validation' NOT NULL, 
	created_at TIMESTAMP WITHOUT TIME ZONE DEFAULT CURRENT_TIMESTAMP, 
	PRIMARY KEY (id), 
	UNIQUE (run_id, metric_name, metric_type), 
	FOREIGN KEY(run_id) REFERENCES model_runs (run_id)
);

CREATE TABLE production_pointer (
	model_name VARCHAR(100) NOT NULL, 
	model_version VARCHAR(50) NOT NULL, 
	artifact_id INTEGER NOT NULL, 
	generation BIGINT NOT NULL, 
	updated_at TIMESTAMP WITHOUT TIME ZONE DEFAULT CURRENT_TIMESTAMP, 
	PRIMARY KEY (model_name), 
	FOREIGN KEY(artifact_id) REFERENCES model_artifacts (id)
);

INSERT INTO predq_schema (version) VALUES (1);
