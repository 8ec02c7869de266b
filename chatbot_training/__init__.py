from chatbot_training.celery import app as celery_app

__all__ = ("celery_app",)
