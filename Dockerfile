# patientbot: the web app + in-process workers (`patientbot serve`), or extra workers
# (`patientbot worker`). Configuration is mounted at /app/config; secrets come from the env.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY nlu ./nlu
COPY channels ./channels
COPY handoff ./handoff
RUN pip install . && useradd --system --uid 10001 patientbot \
    && mkdir -p /app/.data && chown patientbot /app/.data
COPY config ./config
USER patientbot
# Train the embedded NLU model into the image's cache; a changed training set or NLU config
# (mounted at run time) retrains once at start-up (about 10-30 s).
RUN patientbot nlu train --config /app/config
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz').status == 200 else 1)"
CMD ["patientbot", "serve", "--host", "0.0.0.0", "--port", "8000", "--config", "/app/config"]
