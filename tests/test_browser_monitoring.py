"""The Monitoring area in a real headless Chromium: the pages draw their figures and charts from
the metrics API (the content is ingested by the task function in-process; no worker needed)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from tests.conftest import SAMPLE_FAQ_CSV, as_tenant, ingest, make_upload
from tests.test_browser import browser_page as browser_page  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])]


def log_in(page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def test_monitoring_pages_draw_the_tenants_figures(browser_page, live_server, bundle, settings):  # noqa: F811
    from knowledge.models import Chunk
    from tenants.services import member_add

    settings.API_RATE_LIMITS = {**settings.API_RATE_LIMITS, "standard": 10_000}
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    for query in ("reset my password", "refund", "zzqx unknown thing"):
        assert (
            api.post("/api/search", {"chatbot_id": bundle.chatbot.pk, "query": query}, format="json").status_code == 200
        )
    with as_tenant(bundle):
        chunks = Chunk.objects.filter(chatbot=bundle.chatbot).count()
    page = browser_page

    log_in(page, live_server.url, bundle.username, bundle.password)
    page.click("nav >> text=Monitoring")
    page.wait_for_function("() => document.querySelector('#search-kpis [data-kpi=searches]').textContent === '3'")
    page.wait_for_function(
        f"() => document.querySelector('#share-kpis [data-kpi=chunks]').textContent === '{chunks}'", timeout=10_000
    )
    assert page.locator("#chart-searches circle").count() >= 1  # a point per day with searches
    assert page.locator("#per-chatbot [data-f=searches]").inner_text() == "3"
    assert page.locator("#vector-spaces tbody tr").count() == 1
    assert page.locator("#server-kpis").count() == 0  # staff only

    page.click("#per-chatbot >> text=analytics")
    page.wait_for_function("() => document.querySelector('#analytics-kpis [data-kpi=searches]').textContent === '3'")
    assert page.locator("#analytics-kpis [data-kpi=documents]").inner_text() == "1"
    assert page.locator("#chart-documents rect").count() == 1
    assert page.locator("#analytics-gaps tbody tr").count() >= 1  # the unknown question

    # a viewer sees the activity but not the operator figures; staff see the whole server
    viewer = get_user_model().objects.create_user("viewer-mon", password="pw-viewer-mon-1")
    staff = get_user_model().objects.create_superuser("staff-mon", password="pw-staff-mon-1")
    with as_tenant(bundle):
        member_add(tenant=bundle.tenant, user=viewer, role="viewer")
        member_add(tenant=bundle.tenant, user=staff, role="admin")
    page.context.clear_cookies()
    log_in(page, live_server.url, "viewer-mon", "pw-viewer-mon-1")
    page.goto(f"{live_server.url}/monitoring/")
    page.wait_for_function("() => document.querySelector('#search-kpis [data-kpi=searches]').textContent === '3'")
    assert page.locator("#share-kpis").count() == 0
    page.context.clear_cookies()
    log_in(page, live_server.url, "staff-mon", "pw-staff-mon-1")
    page.goto(f"{live_server.url}/monitoring/")
    page.wait_for_function(
        "() => document.querySelector('#server-kpis [data-kpi=connections]').textContent.includes('/')", timeout=15_000
    )
    assert page.locator("#chart-tables rect").count() >= 1
    assert page.locator("#vector-indexes tbody tr").count() >= 1
    # no streaming replica of the test server: the replication table says so
    assert "primary only" in page.locator("#replicas tbody tr").first.inner_text()
    assert page.locator("#monitoring-error").is_hidden()
