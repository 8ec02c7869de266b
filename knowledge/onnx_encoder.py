"""Search queries encoded by ONNX Runtime instead of PyTorch eager mode.

A search embeds one short text per request; on a CPU PyTorch spends most of that time in
per-operator dispatch (about 16 ms for a MiniLM query here), ONNX Runtime's fused kernels take
about 6 ms for the same numbers. The graph is exported once per model from the local weights
(``torch.onnx.export``, nothing downloaded) into ``var/models/`` and checked against PyTorch
before use: a model whose pipeline is not transformer → mean pooling → normalise, a failed
export or a check that disagrees leaves the caller on PyTorch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CHECK_TEXT = "How do I reset my password if I no longer have access to my email?"
MIN_AGREEMENT = 0.9999  # cosine between the ONNX and the PyTorch vector of CHECK_TEXT

_export_lock = threading.Lock()


def _pipeline_supported(model) -> bool:
    from sentence_transformers.models import Normalize, Pooling, Transformer

    modules = list(model)
    if len(modules) not in (2, 3) or not isinstance(modules[0], Transformer) or not isinstance(modules[1], Pooling):
        return False
    if len(modules) == 3 and not isinstance(modules[2], Normalize):
        return False
    config = modules[1].get_config_dict()
    mode = config.get("pooling_mode")  # sentence-transformers 5; older releases: one flag per mode
    if mode is None:
        modes = [key for key, value in config.items() if key.startswith("pooling_mode_") and value is True]
        mode = "mean" if modes == ["pooling_mode_mean_tokens"] else modes
    return mode == "mean"


def _graph_path(model, weights_dir: Path, cache_dir: Path) -> Path:
    import onnxruntime
    import torch

    stamp = [str(weights_dir.resolve()), torch.__version__, onnxruntime.__version__]
    for name in sorted(os.listdir(weights_dir)):
        path = weights_dir / name
        if path.is_file():
            stat = path.stat()
            stamp.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    digest = hashlib.sha1("\n".join(stamp).encode()).hexdigest()[:16]
    return cache_dir / f"{weights_dir.name}-{digest}.onnx"


def _export(model, target: Path) -> None:
    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self, transformer):
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask, token_type_ids):
            tokens = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )[0]
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    wrapped = MeanPooled(model[0].auto_model).eval()
    sample = model.tokenizer([CHECK_TEXT], return_tensors="pt")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(handle)
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                wrapped,
                tuple(sample[name] for name in INPUTS),
                temporary,
                input_names=list(INPUTS),
                output_names=["embedding"],
                dynamic_axes={name: {0: "batch", 1: "tokens"} for name in INPUTS},
                opset_version=17,
                dynamo=False,
            )
        os.replace(temporary, target)  # atomic: another process exporting at once is harmless
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class OnnxQueryEncoder:
    """Encodes one text at a time; thread-safe (ONNX Runtime sessions are)."""

    def __init__(self, *, graph: Path, tokenizer, max_length: int, threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if threads != 1:  # spinning threads would burn the cores other requests need
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.tokenizer = tokenizer
        self.max_length = max_length

    def encode(self, text: str) -> list[float]:
        import numpy as np

        features = self.tokenizer([text], truncation=True, max_length=self.max_length, return_tensors="np")
        feed = {name: features[name].astype(np.int64) for name in INPUTS}
        return self.session.run(None, feed)[0][0].tolist()


def onnx_query_encoder(model, *, weights_dir: Path, cache_dir: Path, threads: int) -> OnnxQueryEncoder | None:
    """An ONNX encoder that gives ``model``'s vectors, or None (then the caller keeps PyTorch)."""
    try:
        import numpy as np
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    if not _pipeline_supported(model) or "token_type_ids" not in model.tokenizer.model_input_names:
        return None
    try:
        graph = _graph_path(model, weights_dir, cache_dir)
        with _export_lock:
            if not graph.exists():
                _export(model, graph)
        encoder = OnnxQueryEncoder(
            graph=graph, tokenizer=model.tokenizer, max_length=model.max_seq_length, threads=threads
        )
        reference = model.encode([CHECK_TEXT], normalize_embeddings=True, show_progress_bar=False)[0]
        agreement = float(np.dot(np.asarray(encoder.encode(CHECK_TEXT)), reference))
    except Exception:
        logger.warning("ONNX query encoder unavailable; queries use PyTorch", exc_info=True)
        return None
    if agreement < MIN_AGREEMENT:
        logger.warning("ONNX query encoder disagrees with PyTorch (cosine %.6f); queries use PyTorch", agreement)
        return None
    return encoder
