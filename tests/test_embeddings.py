"""The local provider's query encoder: ONNX Runtime gives PyTorch's vectors, and falls back to
PyTorch when it cannot. Runs the real model; no database."""

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
    monkeypatch.setattr(onnx_encoder.OnnxQueryEncoder, "encode", lambda self, text: [1.0] + [0.0] * 383)
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
