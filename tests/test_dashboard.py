"""Dashboard pages through Django's test client. Celery is eager: uploads run the ingestion
task function in-process (captured on-commit callbacks)."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from knowledge.models import Document
from tenants.models import ApiKey
from tests.conftest import SAMPLE_FAQ_CSV, as_tenant, make_upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(client, bundle):
    assert client.login(username=bundle.username, password=bundle.password)
    return client


def test_login_required_and_login_page(client, bundle):
    response = client.get("/")
    assert response.status_code == 302 and response.url.startswith("/login/")
    response = client.post("/login/", {"username": bundle.username, "password": "wrong"})
    assert "didn't match" in response.content.decode()
    response = client.post("/login/", {"username": bundle.username, "password": bundle.password})
    assert response.status_code == 302
    assert bundle.chatbot.name in client.get("/").content.decode()


def test_upload_several_files_with_metadata(owner, bundle, run_jobs):
    url = f"/chatbots/{bundle.chatbot.pk}/upload"
    with run_jobs():
        response = owner.post(
            url,
            {
                "files": [
                    make_upload("faq.csv", SAMPLE_FAQ_CSV),
                    make_upload("broken.pdf", b"%PDF-1.4 nope"),
                    make_upload("notes.txt", "Our shop opens at nine and closes at six on weekdays."),
                ],
                "content_type": "faq",
                "category": "store",
                "metadata": '{"region": "eu"}',
            },
            follow=True,
        )
    page = response.content.decode()
    assert "faq.csv: queued for processing." in page and "notes.txt: queued for processing." in page
    with as_tenant(bundle):
        documents = {d.original_filename: d for d in Document.objects.all()}
    assert {d.status for d in documents.values()} == {"ready", "failed"}
    assert documents["faq.csv"].metadata == {"region": "eu"} and documents["faq.csv"].category == "store"
    # the failure reason shows on the chatbot page and on the document page
    page = owner.get(f"/chatbots/{bundle.chatbot.pk}/").content.decode()
    assert "The PDF is corrupt" in page
    detail = owner.get(f"/documents/{documents['faq.csv'].pk}/").content.decode()
    assert "Chunks (3)" in detail and "Q: What payment methods do you accept?" in detail


def test_bad_metadata_and_oversize_files_give_readable_messages(owner, bundle, settings):
    url = f"/chatbots/{bundle.chatbot.pk}/upload"
    response = owner.post(url, {"files": [make_upload("a.txt", "hello there friend")], "metadata": "[1]"}, follow=True)
    assert "Metadata must be a JSON object" in response.content.decode()
    settings.UPLOAD_MAX_BYTES = 10_000
    response = owner.post(
        url,
        {"files": [make_upload("big.txt", "x" * 20_000), make_upload("ok.txt", "a small file that fits the limit")]},
        follow=True,
    )
    page = response.content.decode()
    assert "big.txt: the file is larger than the 0 MB upload limit." in page
    assert "ok.txt: queued for processing." in page
    with as_tenant(bundle):
        assert list(Document.objects.values_list("original_filename", flat=True)) == ["ok.txt"]


def test_duplicate_upload_is_reported(owner, bundle, run_jobs):
    url = f"/chatbots/{bundle.chatbot.pk}/upload"
    with run_jobs():
        owner.post(url, {"files": [make_upload("faq.csv", SAMPLE_FAQ_CSV)]})
    response = owner.post(url, {"files": [make_upload("copy.csv", SAMPLE_FAQ_CSV)]}, follow=True)
    assert "identical content is already uploaded" in response.content.decode()
    with as_tenant(bundle):
        assert Document.objects.count() == 1


def test_reprocess_and_delete_from_the_document_page(owner, bundle, run_jobs):
    with run_jobs():
        owner.post(f"/chatbots/{bundle.chatbot.pk}/upload", {"files": [make_upload("faq.csv", SAMPLE_FAQ_CSV)]})
    with as_tenant(bundle):
        document = Document.objects.get()
    with run_jobs():
        response = owner.post(f"/documents/{document.pk}/reprocess", follow=True)
    assert "queued for reprocessing" in response.content.decode()
    with as_tenant(bundle):
        assert document.jobs.count() == 2
    response = owner.post(f"/documents/{document.pk}/delete", follow=True)
    assert "and its chunks were deleted" in response.content.decode()
    with as_tenant(bundle):
        assert not Document.objects.exists()


def test_viewer_cannot_upload_or_delete(client, bundle, run_jobs):
    from tenants.services import member_add

    viewer = get_user_model().objects.create_user("viewer", password="pw-viewer-1")
    with as_tenant(bundle):
        member_add(tenant=bundle.tenant, user=viewer, role="viewer")
    client.force_login(viewer)
    page = client.get(f"/chatbots/{bundle.chatbot.pk}/").content.decode()
    assert "Upload training data" not in page
    response = client.post(
        f"/chatbots/{bundle.chatbot.pk}/upload", {"files": [make_upload("a.txt", "some text to upload")]}, follow=True
    )
    assert "Your role is &#x27;viewer&#x27;" in response.content.decode()
    with as_tenant(bundle):
        assert not Document.objects.exists()


def test_other_tenants_pages_are_404(owner, other_bundle, run_jobs):
    from tests.conftest import ingest

    theirs = ingest(other_bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV))
    for url in [f"/chatbots/{other_bundle.chatbot.pk}/", f"/documents/{theirs.pk}/"]:
        assert owner.get(url).status_code == 404
    for url in [
        f"/chatbots/{other_bundle.chatbot.pk}/upload",
        f"/documents/{theirs.pk}/reprocess",
        f"/documents/{theirs.pk}/delete",
    ]:
        assert owner.post(url, {"files": [make_upload("x.txt", "words words words")]}).status_code == 404
    with as_tenant(other_bundle):
        assert Document.objects.get(pk=theirs.pk).status == "ready"


def test_forms_require_csrf(bundle):
    client = Client(enforce_csrf_checks=True)
    client.login(username=bundle.username, password=bundle.password)
    response = client.post(f"/chatbots/{bundle.chatbot.pk}/upload", {"files": [make_upload("a.txt", "hello")]})
    assert response.status_code == 403
    with as_tenant(bundle):
        assert not Document.objects.exists()


def test_api_keys_page_creates_once_shown_keys_and_revokes(owner, bundle):
    response = owner.post("/keys/", {"name": "widget", "chatbot": bundle.chatbot.pk, "scopes": ["search"]})
    page = response.content.decode()
    with as_tenant(bundle):
        key = ApiKey.objects.get(name="widget")
    assert key.chatbot_id == bundle.chatbot.pk and key.scopes == ["search"]
    raw = page.split('id="new-key">')[1].split("<")[0]
    assert raw.startswith(key.prefix)
    assert raw not in owner.get("/keys/").content.decode()  # shown once
    owner.post(f"/keys/{key.pk}/revoke")
    with as_tenant(bundle):
        key.refresh_from_db()
    assert key.revoked_at is not None


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])  # staff read on its connection
def test_admin_lists_every_model(bundle):
    from django.contrib.admin.sites import site

    staff = get_user_model().objects.create_superuser("staff", password="pw-staff-1")
    client = Client()
    client.force_login(staff)
    for model in site._registry:
        url = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        assert client.get(url).status_code == 200, url
    assert bundle.chatbot.name in client.get("/admin/tenants/chatbot/").content.decode()  # every tenant's rows


def test_the_chatbot_page_says_how_other_tools_connect(owner, bundle):
    """The ids and URLs the OpenAI client and Dify need, for this chatbot, on its page; each of
    them answers (the OpenAI and Dify tests drive them fully)."""
    page = owner.get(f"/chatbots/{bundle.chatbot.pk}/").content.decode()
    pk = bundle.chatbot.pk
    assert 'base_url="http://testserver/v1"' in page and f'vector_stores.search("vs_{pk}"' in page
    assert f'model="chatbot-{pk}"' in page and "http://testserver/api/dify" in page
    key = {"HTTP_AUTHORIZATION": f"Bearer {bundle.api_key}"}
    assert owner.get(f"/v1/vector_stores/vs_{pk}", **key).json()["id"] == f"vs_{pk}"
    assert owner.get(f"/v1/models/chatbot-{pk}", **key).json()["id"] == f"chatbot-{pk}"
