# The pixelpipe image: collector, Dagster webserver/daemon/run workers, and the CLI.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/home PIXELPIPE_HOME=/var/lib/pixelpipe

WORKDIR /app
COPY pyproject.toml README.md ./
COPY pixelpipe ./pixelpipe
COPY ingest_service ./ingest_service
COPY pipeline ./pipeline
COPY sql ./sql
COPY workspace.yaml dagster.yaml ./
# Editable, so the migrations in /app/sql are found beside the code.
RUN pip install --no-cache-dir -e . \
    && mkdir -p "$DAGSTER_HOME" "$PIXELPIPE_HOME" \
    && python -c "from pixelpipe.stack import write_dagster_instance; write_dagster_instance('$DAGSTER_HOME')" \
    && useradd --system --home "$PIXELPIPE_HOME" pixelpipe \
    && chown -R pixelpipe "$DAGSTER_HOME" "$PIXELPIPE_HOME"
USER pixelpipe

EXPOSE 8000 3000
CMD ["pixelpipe", "collector", "--host", "0.0.0.0"]
