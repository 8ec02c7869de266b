"""The local provider's ONNX encoders (queries one at a time, documents in padded batches) give
PyTorch's vectors, and fall back to PyTorch when they cannot. Runs the real model; no database."""

import numpy as np
import pytest

from knowledge import onnx_encoder
from knowledge.embeddings import LocalProvider, local_model_path

TEXTS = [
    "How do I reset my password?",
    "and how much does that cost?",
    "Überweisung ins Ausland — wie lange dauert das? 🙂",
    "refund " * 400,  # longer than the model's 256 word pieces: truncated the same way
    "x",
]


def _torch_vector(provider: LocalProvider, text: str) -> np.ndarray:
    return provider.model.encode([text], normalize_embeddings=True, show_progress_bar=False)[0]


def test_queries_go_through_onnx_and_match_pytorch():
    provider = LocalProvider()
    assert provider.query_encoder is not None
    for text in TEXTS:
        fast = np.asarray(provider.embed([text])[0])
        assert fast.shape == (384,)
        assert float(np.dot(fast, _torch_vector(provider, text))) > 0.9999, text


def test_torch_runtime_setting_keeps_pytorch(settings):
    settings.EMBEDDING_QUERY_RUNTIME = "torch"
    provider = LocalProvider()
    assert provider.query_encoder is None
    vector = np.asarray(provider.embed(["How do I reset my password?"])[0])
    assert float(np.dot(vector, _torch_vector(provider, "How do I reset my password?"))) > 0.9999


def test_failed_export_falls_back_to_pytorch(monkeypatch, tmp_path, settings):
    settings.VAR_DIR = tmp_path  # no exported graph there yet

    def broken(model, target):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(onnx_encoder, "_export", broken)
    provider = LocalProvider()
    assert provider.query_encoder is None
    assert len(provider.embed(["still answers"])[0]) == 384


def test_a_graph_that_disagrees_is_not_used(monkeypatch, tmp_path):
    provider = LocalProvider()
    monkeypatch.setattr(onnx_encoder.OnnxEncoder, "encode", lambda self, text: [1.0] + [0.0] * 383)
    encoder = onnx_encoder.onnx_query_encoder(
        provider.model, weights_dir=local_model_path(), cache_dir=tmp_path, threads=1
    )
    assert encoder is None


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_settings_give_the_same_vector(tmp_path, threads):
    provider = LocalProvider()
    encoder = onnx_encoder.onnx_query_encoder(
        provider.model, weights_dir=local_model_path(), cache_dir=tmp_path, threads=threads
    )
    vector = np.asarray(encoder.encode(TEXTS[0]))
    assert float(np.dot(vector, _torch_vector(provider, TEXTS[0]))) > 0.9999


def _torch_vectors(provider: LocalProvider, texts: list[str]) -> np.ndarray:
    return provider.model.encode(texts, normalize_embeddings=True, show_progress_bar=False)


def test_int8_documents_stay_close_to_pytorch(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    settings.EMBEDDING_DOCUMENT_RUNTIME = "onnx-int8"
    provider = LocalProvider()
    encoder = provider.document_encoder
    assert encoder is not None and encoder is not provider.query_encoder
    assert any(path.name.endswith("-int8pc.onnx") for path in (tmp_path / "models").iterdir())
    texts = TEXTS + ["Where is my card? It was sent two weeks ago.", "What is the exchange rate for USD?"]
    assert len(texts) > 1 and encoder.encode_batch(texts[:2], batch_size=1)  # batches of any size
    many = texts * 6  # 42 texts: more than one batch of 32, lengths from 1 to 256 word pieces
    vectors = np.asarray(provider.embed(many))
    assert vectors.shape == (42, 384)
    agreement = np.sum(vectors * _torch_vectors(provider, many), axis=1)  # each in its input's place
    assert agreement.min() > 0.97 and agreement.mean() > 0.99
    assert agreement.max() < 0.99999  # quantised for real: not the float graph's numbers


def test_torch_document_runtime_keeps_pytorch(settings):
    settings.EMBEDDING_DOCUMENT_RUNTIME = "torch"
    provider = LocalProvider()
    assert provider.document_encoder is None
    assert provider.query_encoder is not None  # queries keep their own runtime
    vectors = np.asarray(provider.embed(TEXTS[:3]))
    assert np.sum(vectors * _torch_vectors(provider, TEXTS[:3]), axis=1).min() > 0.9999


def test_a_batch_graph_that_disagrees_is_not_used(monkeypatch, tmp_path):
    provider = LocalProvider()
    monkeypatch.setattr(
        onnx_encoder.OnnxEncoder, "encode_batch", lambda self, texts, batch_size=32: [[1.0] + [0.0] * 383] * len(texts)
    )
    encoder = onnx_encoder.onnx_document_encoder(
        provider.model, weights_dir=local_model_path(), cache_dir=tmp_path, threads=1
    )
    assert encoder is None


def test_a_batch_that_fails_in_onnx_is_encoded_by_pytorch(monkeypatch, settings):
    settings.EMBEDDING_DOCUMENT_RUNTIME = "onnx-int8"
    provider = LocalProvider()
    assert provider.document_encoder is not None

    def broken(self, texts, batch_size=32):
        raise MemoryError("runtime out of memory")

    monkeypatch.setattr(onnx_encoder.OnnxEncoder, "encode_batch", broken)
    vectors = np.asarray(provider.embed(TEXTS[:3]))
    assert np.sum(vectors * _torch_vectors(provider, TEXTS[:3]), axis=1).min() > 0.9999
