"""Embedding providers behind one interface: local sentence-transformers and OpenAI.

Vectors come back L2-normalised, as lists of floats, in the order of the input texts.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from django.conf import settings

from knowledge.adapters import QueryAdapter, is_adapter
from knowledge.artifacts import ArtifactMissing, artifact_local
from knowledge.tokens import local_model_path, wordpiece_count

logger = logging.getLogger(__name__)

LOCAL_MODELS = {"all-MiniLM-L6-v2": 384}
OPENAI_MODELS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}


class ProviderUnavailable(Exception):
    """The provider cannot be reached right now (network, 429, 5xx): wait and retry, never substitute."""


class ProviderError(Exception):
    """The provider refused the request for good (bad key, unknown model): the job fails."""


class EmbeddingProvider(Protocol):
    provider: str
    model_name: str
    version: str
    dimensions: int
    max_tokens: int
    tokenizer: str  # a name of knowledge.tokens.COUNTERS (chunking in the parsing sandbox uses it)

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    def embed_queries(self, texts: Sequence[str]) -> list[list[float]]:
        """Each text as a search embeds its query (``/v1/embeddings``: the vectors search uses)."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


class LocalProvider:
    provider = "local"
    version = "1"
    tokenizer = "wordpiece"

    def __init__(self, model_name: str = "all-MiniLM-L6-v2", weights_dir: Path | None = None):
        """``weights_dir``: a fine-tuned version's own weights (an embedding space's artifact);
        None: the base model's packaged weights."""
        if model_name not in LOCAL_MODELS:
            raise ProviderError(f"Unknown local embedding model {model_name!r}.")
        self.model_name = model_name
        self.weights_dir = Path(weights_dir) if weights_dir is not None else None
        self.dimensions = LOCAL_MODELS[model_name]
        self.max_tokens = 254  # 256 word pieces minus [CLS] and [SEP]
        self._model = None
        self._query_encoder = False  # False: not tried yet; None: PyTorch
        self._document_encoder = False
        self._lock = threading.Lock()

    @property
    def weights(self) -> Path:
        return self.weights_dir if self.weights_dir is not None else local_model_path()

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                from django.conf import settings
                from sentence_transformers import SentenceTransformer

                if settings.EMBEDDING_TORCH_THREADS:
                    import torch

                    torch.set_num_threads(settings.EMBEDDING_TORCH_THREADS)
                try:
                    self._model = SentenceTransformer(str(self.weights), device="cpu")
                except Exception as exc:  # a missing or corrupt artifact: this space cannot serve
                    raise ProviderError(f"The model weights at {self.weights} cannot be loaded: {exc}") from exc
        return self._model

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        texts = list(texts)
        if len(texts) == 1:
            return [self._embed_one(texts[0])]
        encoder = self.document_encoder
        if encoder is not None:
            try:
                return encoder.encode_batch(texts, batch_size=32)
            except Exception:  # e.g. out of memory in the runtime: PyTorch gives the same vectors
                logger.warning("ONNX document encoding failed; this batch uses PyTorch", exc_info=True)
        vectors = self.model.encode(
            texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return vectors.tolist()

    def embed_queries(self, texts: Sequence[str]) -> list[list[float]]:
        return [self._embed_one(text) for text in texts]  # the query path, not the int8 batches

    @property
    def query_encoder(self):
        """ONNX Runtime for single texts (search queries), when ``EMBEDDING_QUERY_RUNTIME`` is
        ``onnx`` and the exported graph agrees with PyTorch; else None."""
        if self._query_encoder is False:
            model = self.model
            with self._lock:
                if self._query_encoder is False:
                    from knowledge.onnx_encoder import onnx_query_encoder

                    self._query_encoder = (
                        onnx_query_encoder(
                            model,
                            weights_dir=self.weights,
                            cache_dir=Path(settings.VAR_DIR) / "models",
                            threads=settings.EMBEDDING_TORCH_THREADS,
                        )
                        if settings.EMBEDDING_QUERY_RUNTIME == "onnx"
                        else None
                    )
        return self._query_encoder

    @property
    def document_encoder(self):
        """ONNX Runtime's int8 graph for batches (documents) when ``EMBEDDING_DOCUMENT_RUNTIME``
        is ``onnx-int8`` and the graph agrees with PyTorch; else None (PyTorch)."""
        if self._document_encoder is False:
            encoder = None
            if settings.EMBEDDING_DOCUMENT_RUNTIME == "onnx-int8":
                from knowledge.onnx_encoder import onnx_document_encoder

                encoder = onnx_document_encoder(
                    self.model,
                    weights_dir=self.weights,
                    cache_dir=Path(settings.VAR_DIR) / "models",
                    threads=settings.EMBEDDING_TORCH_THREADS,
                )
            with self._lock:
                if self._document_encoder is False:
                    self._document_encoder = encoder
        return self._document_encoder

    def _embed_one(self, text: str) -> list[float]:
        """One text (a search query): ONNX Runtime when available (same vector, about 2.5x faster
        on a CPU), else the same modules as ``encode`` (tokenize, transformer, mean pooling)
        without its per-call batching and mode switching."""
        encoder = self.query_encoder
        if encoder is not None:
            return encoder.encode(text)
        import torch

        model = self.model
        if model.training:
            model.eval()
        with torch.inference_mode():
            prepare = getattr(model, "preprocess", None) or model.tokenize
            features = prepare([text])
            vector = model.forward(features)["sentence_embedding"][0]
            vector = torch.nn.functional.normalize(vector, p=2, dim=0)
        return vector.tolist()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return wordpiece_count(texts)


class OpenAIProvider:
    """OpenAI embeddings: batched, explicit timeout, backoff on 429/5xx by the client's retries."""

    provider = "openai"
    version = "1"
    batch_size = 256
    tokenizer = "wordpiece"

    def __init__(self, model_name: str = "text-embedding-3-small"):
        if model_name not in OPENAI_MODELS:
            raise ProviderError(f"Unknown OpenAI embedding model {model_name!r}.")
        self.model_name = model_name
        self.dimensions = OPENAI_MODELS[model_name]
        self.max_tokens = 8000

    @functools.cached_property
    def client(self):
        from openai import OpenAI

        if not settings.OPENAI_API_KEY:
            raise ProviderError("OpenAI embeddings need OPENAI_API_KEY to be set.")
        return OpenAI(
            api_key=settings.OPENAI_API_KEY,
            base_url=settings.OPENAI_BASE_URL,
            timeout=settings.OPENAI_TIMEOUT_SECONDS,
            max_retries=settings.OPENAI_MAX_RETRIES,
        )

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import openai

        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            began = time.monotonic()
            try:
                response = self.client.embeddings.create(model=self.model_name, input=batch, encoding_format="float")
            except (
                openai.APIConnectionError,
                openai.APITimeoutError,
                openai.RateLimitError,
                openai.InternalServerError,
            ) as exc:
                raise ProviderUnavailable(f"OpenAI embeddings unavailable: {exc}") from exc
            except openai.APIStatusError as exc:
                if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                    raise ProviderUnavailable(f"OpenAI embeddings unavailable: {exc}") from exc
                raise ProviderError(f"OpenAI rejected the embedding request: {exc.message}") from exc
            rows = sorted(response.data, key=lambda item: item.index)
            if len(rows) != len(batch) or any(len(r.embedding) != self.dimensions for r in rows):
                raise ProviderError("OpenAI returned embeddings of the wrong count or size.")
            vectors.extend(_normalise(r.embedding) for r in rows)
            logger.debug("openai embedded %d texts in %.2fs", len(batch), time.monotonic() - began)
        return vectors

    def embed_queries(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed(texts)  # the same vectors one at a time or batched

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return wordpiece_count(texts)  # see knowledge/tokens.py


class AdapterProvider:
    """Queries of an adapter space: its store's provider, then the learned transform. Documents
    are never embedded through it (they keep the store's vectors: ``EmbeddingSpace.store``)."""

    def __init__(self, base: EmbeddingProvider, adapter, version: str):
        self.base, self.adapter, self.version = base, adapter, version
        self.provider, self.model_name = base.provider, base.model_name
        self.dimensions, self.max_tokens, self.tokenizer = base.dimensions, base.max_tokens, base.tokenizer

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.adapter.apply(self.base.embed(texts)).tolist()

    def embed_queries(self, texts: Sequence[str]) -> list[list[float]]:
        return self.adapter.apply(self.base.embed_queries(texts)).tolist()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.base.count_tokens(texts)


def _normalise(vector: Sequence[float]) -> list[float]:
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    return [v / norm for v in vector]


_providers: dict[str, EmbeddingProvider] = {}
_providers_lock = threading.Lock()


def provider_for(model_key: str) -> EmbeddingProvider:
    """A built-in model's provider (``local:all-MiniLM-L6-v2``, ``openai:text-embedding-3-small``),
    one instance per process: what a model *is* (dimensions, tokenizer). Vectors of a space come
    from ``provider_for_space``, which serves a fine-tuned version's own weights."""
    with _providers_lock:
        if model_key not in _providers:
            kind, _, name = model_key.partition(":")
            if kind == "local":
                _providers[model_key] = LocalProvider(name)
            elif kind == "openai":
                _providers[model_key] = OpenAIProvider(name)
            else:
                raise ProviderError(f"Unknown embedding provider in {model_key!r}.")
        return _providers[model_key]


# Spaces with weights of their own (fine-tuned versions), loaded once per process and kept while
# used: the least recently used is dropped past EMBEDDING_MAX_LOADED_VERSIONS, and a retired
# space's provider is dropped at once (``provider_evict``).
_versions: OrderedDict[tuple[int, str], EmbeddingProvider] = OrderedDict()


def artifact_path(artifact: str) -> Path:
    """Where a space's artifact (a name in the artifact store, ``knowledge/artifacts.py``) lives on
    this host: fetched from the store on first use."""
    try:
        return artifact_local(artifact)
    except ArtifactMissing as exc:
        raise ProviderError(str(exc)) from exc


def provider_for_space(space) -> EmbeddingProvider:
    """The provider that produces ``space``'s vectors: the one registry every embedding goes
    through (ingestion, re-embedding, queries on both search paths). A space without an artifact
    is its built-in model; a space with one loads that artifact's weights (and its own ONNX query
    graph), so version 2 of a model never runs version 1's weights. A space with ``vectors_from``
    embeds queries only (its documents keep the store's vectors): through its store's provider and
    a learned transform (a query adapter), or through weights of its own (a tuned query encoder)."""
    artifact = getattr(space, "artifact", "") or ""
    if not artifact:
        return provider_for(space.model_key)
    key = (space.pk, artifact)
    with _providers_lock:
        found = _versions.get(key)
        if found is not None:
            _versions.move_to_end(key)
            return found
    path = artifact_path(artifact)
    if space.vectors_from_id and is_adapter(path):  # a query adapter over its store's vectors
        try:
            adapter = QueryAdapter.load(path)
        except (OSError, ValueError, KeyError) as exc:
            raise ProviderError(f"The query adapter of embedding space {space.key} cannot be loaded: {exc}") from exc
        if adapter.dimensions != space.dimensions:
            raise ProviderError(
                f"The query adapter of {space.key} has {adapter.dimensions} dimensions, not {space.dimensions}."
            )
        provider = AdapterProvider(provider_for_space(space.vectors_from), adapter, version=space.version)
    elif space.provider != "local":
        raise ProviderError(f"Embedding space {space.key} names weights, but {space.provider} models have none.")
    elif not (path / "config.json").is_file():
        raise ProviderError(f"The weights of embedding space {space.key} are missing ({path}).")
    else:
        provider = LocalProvider(space.model_name, weights_dir=path)
    with _providers_lock:
        provider = _versions.setdefault(key, provider)
        while len(_versions) > settings.EMBEDDING_MAX_LOADED_VERSIONS:
            _versions.popitem(last=False)
    return provider


def provider_evict(space) -> None:
    """Forget a space's loaded weights in this process (it was retired or removed)."""
    with _providers_lock:
        for key in [key for key in _versions if key[0] == space.pk]:
            del _versions[key]


def reset_providers() -> None:
    with _providers_lock:
        _providers.clear()
        _versions.clear()


def warm_up() -> None:
    """Load the default model (and, for a local one, its query encoder) now instead of on the
    first search. A provider that cannot load is left for that search to report."""
    try:
        provider = provider_for(settings.EMBEDDING_DEFAULT_MODEL)
        if isinstance(provider, LocalProvider):
            provider.embed(["warm up"])
    except Exception:
        logger.warning("embedding model warm-up failed", exc_info=True)
