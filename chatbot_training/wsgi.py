import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot_training.settings")
os.environ.setdefault("CHATBOT_PROCESS", "web")  # request connections get the short statement timeout
application = get_wsgi_application()

from search.fastpath import FastPathWSGI  # noqa: E402 (needs the app registry)

# Chatbot searches are answered in front of Django when they plainly can be (search/fastpath.py).
application = FastPathWSGI(application)

if os.environ.get("EMBEDDING_WARM_UP", "1") == "1":
    from knowledge.embeddings import warm_up

    warm_up()  # load the model and its query encoder before the first search, not during it
