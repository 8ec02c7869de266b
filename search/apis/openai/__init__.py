"""The OpenAI-compatible interface under ``/v1``: ``OpenAI(base_url="http://host/v1",
api_key=<our key>)`` works unchanged. A package by concern: ``errors`` (OpenAI's error shape for
every answer under /v1), ``embeddings`` (``/v1/embeddings`` and ``/v1/models``), ``vector_stores`` (chatbots as vector
stores, and their search). Each operation is a
thin adapter: its own wire format in, the product's services underneath, OpenAI's shape out."""

from search.apis.openai.embeddings import EmbeddingsApi, ModelApi, ModelListApi
from search.apis.openai.vector_stores import VectorStoreApi, VectorStoreListApi, VectorStoreSearchApi

__all__ = ["EmbeddingsApi", "ModelApi", "ModelListApi", "VectorStoreApi", "VectorStoreListApi", "VectorStoreSearchApi"]
