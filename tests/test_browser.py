"""End to end in a real headless Chromium (Debian's package, driven by Playwright): log in,
upload files, watch them reach ready or failed. Uploads are processed by a real Celery worker."""

import os
import shutil

import pytest

from tests.conftest import SAMPLE_FAQ_CSV, build_pdf
from tests.worker import celery_worker

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser_page():
    if not os.path.exists(CHROMIUM):
        pytest.skip("no Chromium here: install Debian's 'chromium' package (.ci/run does) to run the browser test")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop in this thread
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page()
        yield page
        browser.close()


def test_login_upload_and_watch_documents_finish(browser_page, live_server, bundle, worker_env, tmp_path):
    from django.conf import settings

    page = browser_page
    good = tmp_path / "store-faq.csv"
    good.write_text(SAMPLE_FAQ_CSV)
    guide = tmp_path / "shipping-guide.pdf"
    guide.write_bytes(build_pdf(["Shipping guide\nParcels leave the warehouse within two business days."]))
    locked = tmp_path / "scan.pdf"
    locked.write_bytes(build_pdf(["", ""]))

    with celery_worker(worker_env):
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", bundle.username)
        page.fill("#id_password", bundle.password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")
        page.click(f"text={bundle.chatbot.name}")
        page.set_input_files("#id_files", [str(good), str(guide), str(locked)])
        page.select_option("#id_content_type", "faq")
        page.fill("#id_category", "shop")
        page.click("#upload-form button[type=submit]")
        page.wait_for_selector("text=store-faq.csv: queued for processing.")
        rows = page.locator("#documents tbody tr")
        assert rows.count() == 3
        # The table updates itself from the API while the worker processes the files
        page.wait_for_function(
            "() => [...document.querySelectorAll('#documents [data-field=status]')]"
            ".every(e => e.textContent === 'ready' || e.textContent === 'failed')",
            timeout=120_000,
        )
        statuses = {
            page.locator(f"#documents tr:has-text('{name}') [data-field=status]").inner_text()
            for name in ("store-faq.csv", "shipping-guide.pdf")
        }
        assert statuses == {"ready"}
        failed_row = page.locator("#documents tr:has-text('scan.pdf')")
        assert failed_row.locator("[data-field=status]").inner_text() == "failed"
        assert "No extractable text (scanned PDF; OCR is not supported)." in failed_row.inner_text()
        assert page.locator("[data-total=ready]").inner_text() == "2"
        page.screenshot(path=str(settings.VAR_DIR / "e2e-chatbot.png"), full_page=True)

        page.click("#documents a:has-text('store-faq.csv')")
        page.wait_for_selector("text=Chunks (3)")
        assert "Q: How do I reset my password?" in page.inner_text("body")
        page.screenshot(path=str(settings.VAR_DIR / "e2e-document.png"), full_page=True)

        # Search playground: semantic and hybrid side by side, then the analytics charts
        page.goto(f"{live_server.url}/chatbots/{bundle.chatbot.pk}/search/")
        page.fill("#id_q", "I forgot my password")
        page.click("#search-form button[type=submit]")
        page.wait_for_selector(".result-column[data-mode=hybrid] .hit")
        first = page.locator(".result-column[data-mode=semantic] .hit").first.inner_text()
        assert "How do I reset my password?" in first and "cosine" in first
        page.screenshot(path=str(settings.VAR_DIR / "e2e-search.png"), full_page=True)
        page.goto(f"{live_server.url}/chatbots/{bundle.chatbot.pk}/search/analytics")
        assert page.locator("#chart-volume rect").count() >= 1  # drawn by the page's script
        assert page.locator("#chart-latency circle").count() >= 2
        page.screenshot(path=str(settings.VAR_DIR / "e2e-analytics.png"), full_page=True)


def test_start_training_from_the_dashboard_watch_it_finish_and_deploy(browser_page, live_server, bundle, worker_env,
                                                                       tmp_path):  # fmt: skip
    """The Training tab in a real browser with a real worker: collect pairs, start a job, watch its
    progress and loss chart until it finishes, deploy the version, see it serving."""
    import json

    from django.conf import settings

    from tests.conftest import ingest, make_upload
    from tests.test_training import MIN_HELDOUT, faq_rows

    ingest(bundle, make_upload("faq.jsonl", "\n".join(json.dumps(r) for r in faq_rows())), content_type="faq")
    page = browser_page
    with celery_worker(
        worker_env,
        TRAINING_ARTIFACTS_DIR=tmp_path / "versions",
        EMBEDDING_TORCH_THREADS=1,
        TRAINING_MIN_HELDOUT=MIN_HELDOUT,
    ):
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", bundle.username)
        page.fill("#id_password", bundle.password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")
        page.goto(f"{live_server.url}/chatbots/{bundle.chatbot.pk}/")
        page.click("text=Training & model versions")
        page.click("button[name=collect]")
        page.wait_for_selector("text=Collected 80 new pairs")
        page.select_option("select[name=job_type]", "initial_training")  # minutes, not seconds: time to watch it
        page.fill("input[name=num_epochs]", "2")
        page.fill("input[name=batch_size]", "8")
        page.click("#start-training")
        page.wait_for_selector("text=is queued; its progress shows below")
        page.wait_for_selector("#live-job")
        page.wait_for_function(
            "() => document.querySelector('#chart-loss polyline') !== null", timeout=240_000
        )  # the loss chart, drawn from the status API while the job trains
        page.screenshot(path=str(settings.VAR_DIR / "e2e-training.png"), full_page=True)
        page.wait_for_selector("#versions tr[data-status=candidate]", timeout=240_000)  # reloaded when done
        assert "succeeded" in page.locator("#jobs tbody tr").first.inner_text()  # (a failure shows its reason)
        row = page.locator("#versions tr[data-status=candidate]")
        force = row.locator("input[name=force]")
        if force.count():
            force.check()
        row.locator("button.deploy").click()
        page.wait_for_selector("text=is being deployed")
        for _ in range(120):
            page.reload()
            if page.locator("#versions tr[data-status=active]").count():
                break
            page.wait_for_timeout(1000)
        assert page.locator("#versions tr[data-status=active]").count() == 1
        assert page.inner_text("#serving").endswith(f"@c{bundle.chatbot.pk}.v1")
        page.screenshot(path=str(settings.VAR_DIR / "e2e-training-deployed.png"), full_page=True)


def test_continuous_learning_closes_the_loop_visible_in_the_dashboard(browser_page, live_server, bundle, worker_env,
                                                                      tmp_path):  # fmt: skip
    """Continuous learning with a real worker and a real browser: opt in on the Training tab, the
    beat's check waits (shown with its reason), feedback arrives through the API, the next check
    starts a job on the worker, the gate decides and the outcome shows on the tab: deployed, or
    refused with nothing changed. The beat's task is sent to the worker as beat sends it."""
    import json

    from django.conf import settings
    from rest_framework.test import APIClient

    from tests.conftest import as_tenant, ingest, make_upload
    from tests.test_training import MIN_HELDOUT, faq_rows
    from tests.test_worker_kill import wait_for
    from training.models import ContinuousLearning, ModelVersion, TrainingPair
    from training.services import training_pairs_collect
    from training.tasks import continuous_learning_task

    ingest(bundle, make_upload("faq.jsonl", "\n".join(json.dumps(r) for r in faq_rows())), content_type="faq")
    with as_tenant(bundle):
        training_pairs_collect(chatbot=bundle.chatbot, llm=False)
        have = TrainingPair.objects.count()
    page = browser_page
    with celery_worker(worker_env, TRAINING_ARTIFACTS_DIR=tmp_path / "versions", EMBEDDING_TORCH_THREADS=1,
                       TRAINING_MIN_HELDOUT=MIN_HELDOUT):  # fmt: skip
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", bundle.username)
        page.fill("#id_password", bundle.password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")
        page.goto(f"{live_server.url}/chatbots/{bundle.chatbot.pk}/training/")
        form = page.locator("#continuous form")
        form.locator("input[name=enabled]").check()
        form.locator("select[name=job_type]").select_option("adapter")
        form.locator("input[name=min_new_pairs]").fill(str(have + 5))
        form.locator("input[name=min_days_between]").fill("0")
        form.locator("#continuous-save").click()
        page.wait_for_selector("text=Continuous learning is on.")

        def checked_since(moment):
            def done():
                with as_tenant(bundle):
                    found = ContinuousLearning.objects.get(chatbot=bundle.chatbot)
                return found if found.last_checked_at and found.last_checked_at > moment else None

            return done

        from django.utils import timezone

        moment = timezone.now()
        continuous_learning_task.delay()  # what beat sends every 15 minutes
        wait_for(checked_since(moment), 60, "the worker did not run the continuous-learning check")
        page.reload()
        assert f"{have} new training pairs since the last version; {have + 5} start a run" in page.inner_text(
            "#continuous-outcome"
        )

        api = APIClient()  # feedback arrives: the chatbot's users found these answered
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
        for product in ("router", "camera", "lamp", "speaker", "watch", "kettle"):
            answer = api.post("/api/search", {"chatbot_id": bundle.chatbot.pk,
                                              "query": f"my {product} does nothing when I switch it on"},
                              format="json").json()  # fmt: skip
            vote = {"helpful": True, "chunk_id": answer["results"][0]["chunk_id"]}
            assert api.post(f"/api/search/{answer['query_id']}/feedback", vote, format="json").status_code == 201

        moment = timezone.now()
        continuous_learning_task.delay()

        def decided():
            with as_tenant(bundle):
                found = ContinuousLearning.objects.select_related("last_job").get(chatbot=bundle.chatbot)
                version = ModelVersion.objects.first()
            if version is None or found.last_job is None or found.last_outcome.startswith(("Started", "Waiting")):
                return None
            return found, version

        found, version = wait_for(decided, 300, "continuous learning did not start a job that the gate decided")
        page.reload()
        outcome = page.inner_text("#continuous-outcome")
        assert outcome == found.last_outcome
        if version.gate.get("passed"):  # deployed: wait for the switch, shown on the tab
            assert "passed the gate" in outcome and "deploying it" in outcome
            for _ in range(120):
                page.reload()
                if page.locator("#versions tr[data-status=active]").count():
                    break
                page.wait_for_timeout(1000)
            assert page.inner_text("#serving").endswith(f"@c{bundle.chatbot.pk}.v1")
        else:  # refused: recorded with its numbers, nothing changed
            assert outcome.startswith("Version 1 refused by the gate (nDCG@10 gain") and "nothing changed" in outcome
            assert page.locator("#versions tr[data-status=candidate]").count() == 1
            assert page.inner_text("#serving") == "local:all-MiniLM-L6-v2@1"
        assert page.locator("#history tr[data-version='1']").count() == 1
        assert page.locator("#chart-history circle").count() >= 2  # the version and what it was judged against
        page.screenshot(path=str(settings.VAR_DIR / "e2e-continuous-learning.png"), full_page=True)
