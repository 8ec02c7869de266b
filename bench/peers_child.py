"""The peers of bench/peers.py, run by its own interpreter (var/peers-venv: the peers pin an older
pgvector than the app). One JSON request per stdin line, one JSON answer per stdout line:

    {"op": "ingest", "peer": "langchain" | "llamaindex", "collection": str, "texts": [...], "ids": [...]}
        -> {"seconds": float}          (embed + insert, as each library does it, in this process)
    {"op": "query", "peer": ..., "collection": str, "text": str, "k": int}
        -> {"ms": float, "ids": [...]} (embed the query + search, in this process)
    {"op": "analyze"} -> {}            (ANALYZE of the peers' tables)

Each peer is used the way its documentation shows: LangChain's ``PGVector`` (langchain-postgres,
JSONB metadata, its default exact search over the collection) and LlamaIndex's ``PGVectorStore``
with its HNSW index (cosine, m 16, ef_construction 64, ef_search 40), both on
``HuggingFaceEmbeddings`` / ``HuggingFaceEmbedding`` of the same local all-MiniLM-L6-v2 weights,
normalised, in PyTorch. Each peer has a database of its own (no other tenant's rows): their
best case.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class LangChainPeer:
    def __init__(self, url: str, weights: str):
        from langchain_huggingface import HuggingFaceEmbeddings

        self.url = url
        self.embeddings = HuggingFaceEmbeddings(
            model_name=weights, model_kwargs={"device": "cpu"}, encode_kwargs={"normalize_embeddings": True}
        )
        self.stores = {}

    def store(self, collection: str):
        from langchain_postgres import PGVector

        if collection not in self.stores:
            self.stores[collection] = PGVector(
                embeddings=self.embeddings, collection_name=collection, connection=self.url, use_jsonb=True
            )
        return self.stores[collection]

    def ingest(self, collection: str, texts: list[str], ids: list[str]) -> None:
        self.store(collection).add_texts(texts, metadatas=[{"example_id": i} for i in ids])

    def query(self, collection: str, text: str, k: int) -> list[str]:
        return [doc.metadata.get("example_id") for doc in self.store(collection).similarity_search(text, k=k)]


class LlamaIndexPeer:
    def __init__(self, url: str, weights: str):
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        self.url = url
        self.embed_model = HuggingFaceEmbedding(model_name=weights, device="cpu", normalize=True)
        self.retrievers = {}

    def _store(self, collection: str):
        from llama_index.vector_stores.postgres import PGVectorStore

        _, _, rest = self.url.partition("://")  # user:password@host/database?host=/socket
        return PGVectorStore.from_params(
            connection_string=f"postgresql+psycopg2://{rest}",
            async_connection_string=f"postgresql+asyncpg://{rest}",
            table_name=collection,
            embed_dim=384,
            hnsw_kwargs={
                "hnsw_m": 16,
                "hnsw_ef_construction": 64,
                "hnsw_ef_search": 40,
                "hnsw_dist_method": "vector_cosine_ops",
            },
        )

    def ingest(self, collection: str, texts: list[str], ids: list[str]) -> None:
        from llama_index.core import StorageContext, VectorStoreIndex
        from llama_index.core.schema import TextNode

        store = self._store(collection)
        nodes = [TextNode(text=text, metadata={"example_id": i}) for text, i in zip(texts, ids)]
        index = VectorStoreIndex(
            nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=self.embed_model
        )
        self.retrievers[collection] = index

    def query(self, collection: str, text: str, k: int) -> list[str]:
        from llama_index.core import VectorStoreIndex

        if collection not in self.retrievers:
            self.retrievers[collection] = VectorStoreIndex.from_vector_store(
                self._store(collection), embed_model=self.embed_model
            )
        retriever = self.retrievers[collection].as_retriever(similarity_top_k=k)
        return [hit.node.metadata.get("example_id") for hit in retriever.retrieve(text)]


def main() -> None:
    config = json.loads(sys.stdin.readline())
    langchain_url = "postgresql+psycopg://" + config["langchain_url"].partition("://")[2]
    peers = {
        "langchain": LangChainPeer(langchain_url, config["weights"]),
        "llamaindex": LlamaIndexPeer(config["llamaindex_url"], config["weights"]),
    }
    for peer in peers.values():  # load the model and its kernels before anything is timed
        if isinstance(peer, LangChainPeer):
            peer.embeddings.embed_documents(["warm up"] * 4)
            peer.embeddings.embed_query("warm up")
        else:
            peer.embed_model.get_text_embedding_batch(["warm up"] * 4)
            peer.embed_model.get_query_embedding("warm up")
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "ingest":
            began = time.perf_counter()
            peers[request["peer"]].ingest(request["collection"], request["texts"], request["ids"])
            answer = {"seconds": time.perf_counter() - began}
        elif request["op"] == "query":
            began = time.perf_counter()
            ids = peers[request["peer"]].query(request["collection"], request["text"], request["k"])
            answer = {"ms": (time.perf_counter() - began) * 1000, "ids": ids}
        elif request["op"] == "analyze":
            import psycopg

            for url in (config["langchain_url"], config["llamaindex_url"]):
                with psycopg.connect("postgresql://" + url.partition("://")[2], autocommit=True) as conn:
                    conn.execute("ANALYZE")
            answer = {}
        else:
            answer = {"error": f"unknown op {request['op']!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
