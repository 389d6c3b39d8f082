# The predq image: workers (`predq worker`), the CLI, and Flower for the compose profile.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY modelstore ./modelstore
COPY workers ./workers
COPY producer ./producer
RUN pip install -c constraints.txt . "flower>=2"

# Run unprivileged; models and the prediction spool live under /var/lib/predq.
RUN useradd --create-home --uid 10001 predq \
    && mkdir -p /var/lib/predq/models /var/lib/predq/spool \
    && chown -R predq /var/lib/predq
USER predq
ENV PREDQ_MODEL_DIR=/var/lib/predq/models \
    PREDQ_SPOOL_DIR=/var/lib/predq/spool

CMD ["predq", "worker"]
