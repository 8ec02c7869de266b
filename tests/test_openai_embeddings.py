"""``/v1/embeddings`` and ``/v1/models`` driven by the official ``openai`` client (openai-python,
``OpenAI(base_url=.../v1, api_key=<our key>)``) over HTTP against a live server (pytest-django's
``live_server``: a real server thread; requests run as the app role under row-level security).
The client asks for base64 vectors unless told otherwise, so both encodings are exercised."""

import numpy as np
import openai
import pytest

TEXTS = ["How do I reset my password?", "Wo ist mein Paket? Es sollte gestern ankommen.", "refund " * 300]


@pytest.fixture
def client(openai_clients, bundle):
    return openai_clients(bundle.api_key)


def _search_vector(bundle, text: str) -> np.ndarray:
    """The query vector the chatbot's own search uses for ``text``."""
    from knowledge.embeddings import provider_for_space
    from search.services.serving import serving_for
    from tests.conftest import as_tenant

    with as_tenant(bundle):
        space = serving_for(bundle.chatbot).space
    return np.asarray(provider_for_space(space).embed([text])[0])


def test_embeddings_are_the_vectors_search_uses(client, bundle):
    for model in ("all-MiniLM-L6-v2", f"chatbot-{bundle.chatbot.pk}"):
        response = client.embeddings.create(model=model, input=TEXTS)  # base64 on the wire
        assert response.model == model and [d.index for d in response.data] == [0, 1, 2]
        assert response.usage.prompt_tokens == response.usage.total_tokens > 256
        for item, text in zip(response.data, TEXTS):
            vector = np.asarray(item.embedding)
            assert vector.shape == (384,) and abs(np.linalg.norm(vector) - 1) < 1e-4
            assert float(np.dot(vector, _search_vector(bundle, text))) >= 0.999, (model, text[:20])
    floats = client.embeddings.create(model="local:all-MiniLM-L6-v2", input=TEXTS[0], encoding_format="float")
    assert len(floats.data) == 1 and float(np.dot(floats.data[0].embedding, _search_vector(bundle, TEXTS[0]))) >= 0.999
    same = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[0], dimensions=384)
    assert len(same.data[0].embedding) == 384


def test_models_list_what_the_key_may_embed_with(client, bundle, other_bundle):
    ids = [m.id for m in client.models.list()]
    assert "all-MiniLM-L6-v2" in ids and f"chatbot-{bundle.chatbot.pk}" in ids
    assert f"chatbot-{other_bundle.chatbot.pk}" not in ids  # another tenant's chatbot
    model = client.models.retrieve(f"chatbot-{bundle.chatbot.pk}")
    assert model.id == f"chatbot-{bundle.chatbot.pk}" and model.object == "model"
    assert model.owned_by == bundle.tenant.slug and model.model_extra["dimensions"] == 384
    assert client.models.retrieve("local:all-MiniLM-L6-v2").owned_by == "chatbot-training"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(f"chatbot-{other_bundle.chatbot.pk}")


def test_a_fine_tuned_version_is_listed_and_embeds_with_its_own_weights(client, bundle, tmp_path, settings):
    """A version with weights of its own (saved from the base model with one layer changed, as a
    fine-tune would): listed under its space key, and its vectors are that model's, not the base's."""
    import torch
    from sentence_transformers import SentenceTransformer

    from knowledge.embeddings import local_model_path, provider_for_space
    from knowledge.models import EmbeddingSpace
    from tests.conftest import as_tenant

    settings.TRAINING_ARTIFACTS_DIR = tmp_path
    changed = SentenceTransformer(str(local_model_path()), device="cpu")  # a copy: the served model stays
    with torch.no_grad():
        changed[0].auto_model.encoder.layer[5].output.dense.weight.mul_(0.5)
    changed.save(str(tmp_path / "ft-test"))
    with as_tenant(bundle):
        space = EmbeddingSpace.objects.create(tenant=bundle.tenant, provider="local", model_name="all-MiniLM-L6-v2",
                                              version="ft-test", dimensions=384, artifact="ft-test")  # fmt: skip
    assert space.key in [m.id for m in client.models.list()]
    vector = np.asarray(client.embeddings.create(model=space.key, input=TEXTS[0]).data[0].embedding)
    own = np.asarray(provider_for_space(space).embed([TEXTS[0]])[0])
    assert float(np.dot(vector, own)) >= 0.999
    assert float(np.dot(vector, _search_vector(bundle, TEXTS[0]))) < 0.999  # not the base model's


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"model": "all-MiniLM-L6-v2", "input": [[1, 2, 3]]}, "input"),  # token arrays: another tokenizer's ids
        ({"model": "all-MiniLM-L6-v2", "input": []}, "input"),
        ({"model": "all-MiniLM-L6-v2", "input": [""]}, "input"),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"] * 2049}, "input"),
        ({"model": "all-MiniLM-L6-v2", "input": "x", "dimensions": 128}, "dimensions"),
        ({"model": "all-MiniLM-L6-v2", "input": "x", "extra_body": {"colour": "red"}}, "colour"),
        ({"model": "all-MiniLM-L6-v2", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "all-MiniLM-L6-v2", "input": "x", "extra_body": {"user": None}}, "user"),
        ({"model": "all-MiniLM-L6-v2", "input": "x", "extra_body": {"dimensions": None}}, "dimensions"),
    ],
)
def test_bad_requests_are_openai_shaped_400s_naming_the_param(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(**kwargs)
    assert raised.value.status_code == 400 and raised.value.param == param
    assert raised.value.type == "invalid_request_error" and raised.value.message


def test_keys_and_scopes_map_to_the_clients_exceptions(client, openai_clients, bundle, other_bundle, settings):
    from tenants.services import api_key_create
    from tests.conftest import as_tenant

    with pytest.raises(openai.NotFoundError) as raised:
        client.embeddings.create(model="text-embedding-3-small-unknown", input="x")
    assert raised.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model=f"chatbot-{other_bundle.chatbot.pk}", input="x")
    stranger = openai_clients("ct_not_a_key")
    with pytest.raises(openai.AuthenticationError) as raised:
        stranger.embeddings.create(model="all-MiniLM-L6-v2", input="x")
    assert raised.value.status_code == 401 and raised.value.code == "invalid_api_key"
    with as_tenant(bundle):
        writer = api_key_create(tenant=bundle.tenant, name="writer", scopes=["write"])
    limited = openai_clients(writer.raw_key)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        limited.embeddings.create(model="all-MiniLM-L6-v2", input="x")
    assert "search" in raised.value.message
    settings.API_RATE_LIMITS = {name: 1 for name in settings.API_RATE_LIMITS}  # this minute is used up
    with pytest.raises(openai.RateLimitError) as raised:
        client.embeddings.create(model="all-MiniLM-L6-v2", input="x")
    assert int(raised.value.response.headers["retry-after"]) >= 1
    assert raised.value.code == "rate_limit_exceeded"
