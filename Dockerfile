# One image for every RunLedger role (ledger, worker, api); docker-compose.yml picks the
# role with the command and configures it only through RUNLEDGER_* variables.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
RUN pip install /app \
    && useradd --system --uid 10001 --create-home --home-dir /home/runledger runledger \
    && mkdir -p /data \
    && chown runledger /data

# Flow code: packages in the build context (e.g. examples/) are importable from /app;
# which modules workers may import is limited by RUNLEDGER_FLOW_ALLOWLIST.
ENV PYTHONPATH=/app

USER runledger
WORKDIR /data
CMD ["runledger", "--help"]
