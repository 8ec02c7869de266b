"""Dashboard search pages: playground, analytics with charts, knowledge gaps and the FAQ shortcut.
Celery is eager: ingestion runs the task function in-process."""

import pytest
from django.contrib.auth import get_user_model

from knowledge.models import Document
from search.models import SearchLog
from tests.conftest import SAMPLE_FAQ_CSV, as_tenant, ingest, make_upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(client, bundle):
    assert client.login(username=bundle.username, password=bundle.password)
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    return client


def test_playground_shows_semantic_and_hybrid_side_by_side(owner, bundle):
    page = owner.get(f"/chatbots/{bundle.chatbot.pk}/search/", {"q": "forgot my password", "max_results": 2})
    html = page.content.decode()
    assert page.status_code == 200
    assert html.count('class="card result-column"') == 2
    assert 'data-mode="semantic"' in html and 'data-mode="hybrid"' in html
    assert "How do I reset my password?" in html and 'class="score"' in html and "faq.csv" in html
    with as_tenant(bundle):
        logs = list(SearchLog.objects.filter(chatbot=bundle.chatbot).select_related("user"))
    assert sorted(log.mode for log in logs) == ["hybrid", "semantic"]
    assert all(log.source == "dashboard" and log.user.username == bundle.username for log in logs)


def test_playground_filters_conversation_and_errors(owner, bundle):
    page = owner.get(
        f"/chatbots/{bundle.chatbot.pk}/search/",
        {
            "q": "and can I change it?",
            "conversation": "user: my delivery address is wrong\nassistant: sorry!",
            "compare": "semantic,hybrid,keyword",
            "metadata": '{"category": "shipping"}',
        },
    ).content.decode()
    assert page.count('class="card result-column"') == 3 and "Effective query" in page
    assert "change the address" in page and "Visa" not in page
    bad = owner.get(f"/chatbots/{bundle.chatbot.pk}/search/", {"q": "x", "metadata": "{oops"}).content.decode()
    assert 'id="search-error"' in bad and "Metadata filter must be JSON" in bad
    bad = owner.get(f"/chatbots/{bundle.chatbot.pk}/search/", {"q": "x", "max_results": "500"}).content.decode()
    assert "Max results must be a number from 1 to 50" in bad


def test_analytics_page_with_charts_and_gaps_and_the_faq_shortcut(owner, bundle, run_jobs):
    for q in ["How do I pay?", "Do you ship to Mars?", "Can you deliver to planet Mars?"]:
        owner.get(f"/chatbots/{bundle.chatbot.pk}/search/", {"q": q, "compare": "semantic,hybrid"})
    with as_tenant(bundle):
        assert SearchLog.objects.filter(query__icontains="mars").update(result_count=0, top_score=None) == 4
    page = owner.get(f"/chatbots/{bundle.chatbot.pk}/search/analytics", {"days": 7}).content.decode()
    for chart in ("chart-volume", "chart-latency", "chart-zero"):
        assert f'id="{chart}"' in page
    assert '<b data-kpi="searches">6</b>' in page and '<b data-kpi="zero">4</b>' in page
    assert "Add FAQ answer" in page and "also: " in page  # the two Mars wordings are one gap
    with run_jobs():
        response = owner.post(
            f"/chatbots/{bundle.chatbot.pk}/faq",
            {"question": "Do you ship to Mars?", "answer": "Not yet: we ship to Earth addresses only.", "days": 7},
            follow=True,
        )
    assert "FAQ answer for “Do you ship to Mars?” added" in response.content.decode()
    with as_tenant(bundle):
        document = Document.objects.get(title="FAQ: Do you ship to Mars?")
    assert (document.status, document.content_type) == ("ready", "faq")
    page = owner.get(f"/chatbots/{bundle.chatbot.pk}/search/", {"q": "delivery to Mars"}).content.decode()
    assert "we ship to Earth addresses only" in page
    empty = owner.post(f"/chatbots/{bundle.chatbot.pk}/faq", {"question": "x", "answer": ""}, follow=True)
    assert "Write both the question and its answer" in empty.content.decode()


def test_viewer_sees_analytics_but_cannot_add_answers(client, bundle):
    from tenants.services import member_add

    viewer = get_user_model().objects.create_user("viewer", password="pw-viewer-1")
    with as_tenant(bundle):
        member_add(tenant=bundle.tenant, user=viewer, role="viewer")
    client.force_login(viewer)
    assert client.get(f"/chatbots/{bundle.chatbot.pk}/search/analytics").status_code == 200
    response = client.post(f"/chatbots/{bundle.chatbot.pk}/faq", {"question": "q?", "answer": "a."}, follow=True)
    assert "Your role is &#x27;viewer&#x27;" in response.content.decode()
    with as_tenant(bundle):
        assert not Document.objects.exists()


def test_other_tenants_search_pages_are_404(owner, other_bundle):
    for url in [
        f"/chatbots/{other_bundle.chatbot.pk}/search/?q=x",
        f"/chatbots/{other_bundle.chatbot.pk}/search/analytics",
    ]:
        assert owner.get(url).status_code == 404
    assert owner.post(f"/chatbots/{other_bundle.chatbot.pk}/faq", {"question": "q", "answer": "a"}).status_code == 404
