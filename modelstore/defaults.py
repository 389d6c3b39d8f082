"""Every default of predq, named once (rq style): settings, the store and workers read these."""

from __future__ import annotations

DEFAULT_DATABASE_URL = "postgresql://postgres:postgres@localhost:5433/postgres"
DEFAULT_BROKER_URL = "redis://localhost:6379/0"
DEFAULT_MODEL_DIR = "./models"
DEFAULT_MODEL_NAME = "default"
DEFAULT_ROLE = "production"
DEFAULT_QUEUE = "predq"
FILESYSTEM_BROKER_DIR = "./.predq-broker"

CONNECT_TIMEOUT_S = 5
"""Bounded connect timeout: an unreachable database costs this, never a hang."""
STATEMENT_TIMEOUT_MS = 60_000
WORKER_CHECK_S = 1.0
"""Before a longer wait for a result, the producer pings workers this long once and warns
when none answers (the request stays queued)."""

VISIBILITY_TIMEOUT_S = 3600
"""Redis only: a delivered message nobody is known to hold returns after this (last resort)."""
OWNER_TTL_S = 20
"""Redis only: a consumer silent this long is dead; what it held goes back to the queue."""
SWEEP_INTERVAL_S = 10
"""Redis only: how often every consumer returns the messages of dead ones (at most)."""
GENERATION_POLL_S = 2.0
"""Every serving process re-reads the production pointer at least this often."""
SIGNAL_POLL_S = 0.1
"""How often a serving process may peek at the cheap Redis generation signal."""
MAX_BATCH_SIZE = 512
"""Upper bound on rows one micro-batch predicts and logs together."""
BATCH_LINGER_MS = 5.0
"""How long a micro-batch waits for company, only while requests overlap; 0 never waits."""
DURABLE_WAIT_S = 120.0
"""Longest a predict task waits for its predicted row to be durable (the write itself has a
10 s deadline and a spool): a bound against a defect, never reached in normal serving."""
MAX_DEAD_LETTER_BYTES = 64 * 1024 * 1024
"""Cap on a spool directory's dead-letter file (rows the database refused at replay)."""
REPLAY_DEADLINE_PER_ROW_S = 0.01
"""A replayed chunk's write deadline: the serving write deadline plus this per row, so a
slow server is not cut off mid-chunk (5,000 rows: 10 s + 50 s)."""
MODEL_CACHE_SIZE = 2
"""Model versions each loader keeps in memory (PREDQ_MODEL_CACHE_SIZE): the served one and
the one before it, for a quick rollback. Older versions are released once no batch holds
them."""
UNKNOWN_MODEL_TTL_S = 5.0
"""How long a serving process remembers that a model name is unknown or unavailable."""
MAX_UNKNOWN_MODEL_NAMES = 1024
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

SCHEMA_VERSION = 3
"""2: the partitioned log (bigint ids, role, rollups); 3: model_artifacts.upload_request_id
(idempotent uploads). `predq db upgrade` migrates 1 and 2."""
LOG_PARTITION = "day"
"""PREDQ_LOG_PARTITION: the prediction log's partition grain, day, week or month."""
LOG_PARTITIONS_AHEAD = 7
"""PREDQ_LOG_PARTITIONS_AHEAD: partitions kept created beyond the current one."""
LOG_RETENTION_DAYS = 0
"""PREDQ_LOG_RETENTION_DAYS: workers drop partitions older than this; 0 keeps everything."""
LOG_MAINTENANCE_INTERVAL_S = 3600.0
"""How often a worker's maintenance thread creates partitions ahead (and prunes)."""
LOOSE_DEDUP_WINDOW_S = 86_400
"""A row whose time the worker chose (no request_time from the client) is deduplicated
against rows of its (request_id, version) this close in time, across partitions."""
PRUNE_LOCK_TIMEOUT_MS = 2_000
"""How long a partition drop waits for its brief lock before giving up (writers queue
behind a waiting ACCESS EXCLUSIVE request, so it must be short)."""
COPY_THRESHOLD_ROWS = 200
"""Below this many rows a multi-row VALUES insert beats COPY into a temp table."""

QUEUE_TYPE = "quorum"
"""RabbitMQ queue type of predq's task queue (PREDQ_QUEUE_TYPE): quorum or classic."""
DELIVERY_LIMIT = 5
"""Deliveries of one message before RabbitMQ parks it in DEAD_QUEUE (PREDQ_DELIVERY_LIMIT)."""
DEAD_QUEUE = "predq.dead"
"""Where poison messages are parked: a RabbitMQ queue, or a Redis list on a Redis broker."""
AMQP_HEARTBEAT_S = 8
"""AMQP heartbeat: a silent worker's connection is closed after about two of these, and
RabbitMQ requeues its unacknowledged messages (PREDQ_AMQP_HEARTBEAT). Measured from a cut
to the last task logged elsewhere: 5 s 20 s, 10 s 26-30 s; but 5 s dropped busy workers'
connections on a machine at load average 10-20. RabbitMQ advises 5-20 s."""
