"""Gunicorn settings for serving the app (``gunicorn -c chatbot_training/gunicorn_conf.py
chatbot_training.wsgi``). Command-line flags override these; each worker loads the embedding
model and its query encoder before it takes requests, so no search waits for them."""

import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", (os.cpu_count() or 1) * 2))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 2))
keepalive = 30
timeout = 120


def post_worker_init(worker):
    from knowledge.embeddings import warm_up

    warm_up()
