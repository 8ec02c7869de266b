"""The OpenAI-compatible interface (``search/apis/openai/``), mounted at ``/v1``."""

from django.urls import path

from search.apis import openai

urlpatterns = [
    path("embeddings", openai.EmbeddingsApi.as_view(), name="v1-embeddings"),
    path("models", openai.ModelListApi.as_view(), name="v1-models"),
    path("models/<path:model_id>", openai.ModelApi.as_view(), name="v1-model"),
    path("vector_stores", openai.VectorStoreListApi.as_view(), name="v1-vector-stores"),
    path("vector_stores/<str:vector_store_id>", openai.VectorStoreApi.as_view(), name="v1-vector-store"),
    path(
        "vector_stores/<str:vector_store_id>/search",
        openai.VectorStoreSearchApi.as_view(),
        name="v1-vector-store-search",
    ),
]
