"""Every default of predq, named once (rq style): settings, the store and workers read these."""

from __future__ import annotations

DEFAULT_DATABASE_URL = "postgresql://postgres:postgres@localhost:5433/postgres"
DEFAULT_BROKER_URL = "redis://localhost:6379/0"
DEFAULT_MODEL_DIR = "./models"
DEFAULT_MODEL_NAME = "default"
DEFAULT_QUEUE = "predq"
FILESYSTEM_BROKER_DIR = "./.predq-broker"

CONNECT_TIMEOUT_S = 5
"""Bounded connect timeout: an unreachable database costs this, never a hang."""
STATEMENT_TIMEOUT_MS = 60_000

VISIBILITY_TIMEOUT_S = 3600
GENERATION_POLL_S = 2.0
"""Every serving process re-reads the production pointer at least this often."""
SIGNAL_POLL_S = 0.1
"""How often a serving process may peek at the cheap Redis generation signal."""
MAX_BATCH_SIZE = 512
"""Upper bound on rows one micro-batch predicts and logs together."""
BATCH_LINGER_MS = 5.0
"""How long a micro-batch waits for company, only while requests overlap; 0 never waits."""
MAX_ROWS_PER_TASK = 10_000
BATCH_TASKS_AT_ONCE = 2
"""predict_batch tasks one serving process runs at once (one predicting while one writes);
more would only take turns on the GIL, each holding its rows and a connection."""
MAX_ARTIFACT_B64_BYTES = 16 * 1024 * 1024
MAX_STRING_FEATURE_CHARS = 1024
MAX_REQUEST_ID_CHARS = 128
MAX_JSON_DEPTH = 32
"""Deepest nesting a message body may have, counted from its root (PREDQ_MAX_JSON_DEPTH)."""
MAX_JSON_ITEMS = 2_000_000
"""Array items plus object entries one message body may hold (PREDQ_MAX_JSON_ITEMS)."""
DEAD_LETTER_QUEUE = "predq.dead"
"""Redis list where workers park messages they cannot decode or dispatch."""
DEAD_LETTER_MAX = 10_000
"""Newest parked messages kept in the Redis dead-letter list (PREDQ_DEAD_LETTER_MAX)."""
WORKER_THREADS = 64
SPOOL_DIR = "./spool"
METRICS_PORT = 9808
"""Workers' Prometheus endpoint (PREDQ_METRICS_PORT); 0 disables it."""
QUALITY_GATE_MIN_ROWS = 200
"""Labelled rows each version needs before the live quality gate judges it."""
QUALITY_GATE_INTERVAL_S = 5.0
"""How often a worker's quality gate re-checks the production versions."""

SCHEMA_VERSION = 1
COPY_THRESHOLD_ROWS = 200
"""Below this many rows a multi-row VALUES insert beats COPY into a temp table."""
