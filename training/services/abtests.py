"""A/B tests of model versions: live traffic between the active version (control) and a variant.

- ``ab_test_start``: the variant's space is held as ``building`` and embedded on the training
  queue with progress (``model_version_embed``, as a deploy does), then serves
  ``traffic_percent`` of the searches (``chatbot_space_test_begin``); assignment is sticky, by
  the search's user, conversation or query (``search.services.serving``). Every search answer
  and log row names its arm.
- ``ab_test_report``: per arm, searches, helpful-feedback rate, zero-result and low-score rates,
  mean top score, p50/p95 latency; the difference in helpful rate with a **two-proportion
  z-test** (pooled, two-sided), and the searches still needed for the configured power to
  detect the observed difference (or ``AB_TEST_MIN_EFFECT`` while there is none).
- ``ab_test_promote``: the variant becomes the active version at once (its vectors exist);
  ``ab_test_stop``: the control keeps serving, the variant is a candidate again.
- ``ab_tests_check`` (beat): ends tests at ``max_days`` and stops a variant whose zero-result
  rate or p95 latency is clearly worse (a guardrail), with an ``abtest.guardrail`` audit alert.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from statistics import NormalDist

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from knowledge.services import chatbot_space_test_begin, chatbot_space_test_end
from search.logbuffer import search_logs_flush
from search.services import serving_for
from tenants.audit import audit_record
from tenants.errors import Conflict, DomainError, NotFound
from tenants.models import Chatbot, Tenant
from training.models import ABTest, ModelVersion
from training.selectors import ab_test_arms
from training.services.versions import _switch, model_version_embed, model_version_hold

logger = logging.getLogger(__name__)

VStatus = ModelVersion.Status
TStatus = ABTest.Status
NORMAL = NormalDist()


def _whole(value, field: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DomainError(f"{field} must be a whole number from {low} to {high}.", field=field)
    return value


def ab_test_start(
    *,
    tenant: Tenant,
    chatbot: Chatbot,
    variant_version_id,
    traffic_percent=10,
    min_searches=1000,
    max_days=14,
    force: bool = False,
    requested_by: str = "",
) -> ABTest:
    """Start a test of ``variant_version_id`` against the active version (409 while another test
    or a deploy of this chatbot is under way)."""
    if chatbot.tenant_id != tenant.pk:
        raise NotFound("Chatbot not found.", field="chatbot_id")
    variant_version_id = _whole(variant_version_id, "variant_version_id", 1, 2**63 - 1)
    traffic_percent = _whole(traffic_percent, "traffic_percent", 1, 50)
    min_searches = _whole(min_searches, "min_searches", 10, 10_000_000)
    max_days = _whole(max_days, "max_days", 1, 90)
    with transaction.atomic():
        version = (
            ModelVersion.objects.select_for_update()
            .filter(pk=variant_version_id, chatbot=chatbot)
            .select_related("space")
            .first()
        )
        if version is None:
            raise NotFound("Model version not found for this chatbot.", field="variant_version_id")
        if ABTest.objects.filter(chatbot=chatbot, status__in=ABTest.LIVE).exists():
            raise Conflict("An A/B test is already running for this chatbot; promote or stop it first.")
        if ModelVersion.objects.filter(chatbot=chatbot, status=VStatus.DEPLOYING).exists():
            raise Conflict("A version of this chatbot is being deployed; wait for it to finish.")
        if version.status not in (VStatus.CANDIDATE, VStatus.PREVIOUS):
            raise Conflict(f"Version {version.number} is {version.status}; only a candidate or previous version "
                           "can be tested against the active one.")  # fmt: skip
        if not version.gate.get("passed") and not force:
            raise Conflict(
                f"Version {version.number} did not pass the evaluation gate ({version.gate.get('reason', '')}); "
                "test it anyway with force: true."
            )
        control = ModelVersion.objects.filter(chatbot=chatbot, status=VStatus.ACTIVE).first()
        model_version_hold(chatbot, version)
        version.status, version.deploy_progress, version.error = VStatus.DEPLOYING, 0, ""
        version.save(update_fields=["status", "deploy_progress", "error"])
        test = ABTest.objects.create(
            tenant_id=tenant.pk,
            chatbot=chatbot,
            variant=version,
            control=control,
            control_space=serving_for(chatbot).space.key,
            traffic_percent=traffic_percent,
            min_searches=min_searches,
            max_days=max_days,
            requested_by=requested_by[:200],
        )
        audit_record(
            action="abtest.start",
            tenant_id=tenant.pk,
            target=f"chatbot:{chatbot.pk}",
            variant=version.number,
            traffic_percent=traffic_percent,
            forced=bool(force and not version.gate.get("passed")),
        )
        transaction.on_commit(lambda: _prepare_enqueue(test.pk, tenant.pk))
    return test


def _prepare_enqueue(test_id: int, tenant_id: int) -> None:
    from training.tasks import ab_test_prepare_task

    try:
        ab_test_prepare_task.delay(test_id=test_id, tenant_id=tenant_id)  # the training queue
    except Exception:
        logger.warning("A/B test %s not sent to the broker", test_id, exc_info=True)


def ab_test_prepare_run(*, test_id: int) -> str:
    """Embed the variant's space (progress on the test), then let it serve its share."""
    test = (
        ABTest.objects.filter(pk=test_id, status=TStatus.EMBEDDING)
        .select_related("variant__space", "variant__chatbot", "chatbot")
        .first()
    )
    if test is None:
        return "skipped"
    version = test.variant

    def progress(percent: int) -> None:
        ABTest.objects.filter(pk=test.pk).update(progress=percent)
        ModelVersion.objects.filter(pk=version.pk).update(deploy_progress=percent)

    def begin() -> None:
        if not ABTest.objects.select_for_update().filter(pk=test.pk, status=TStatus.EMBEDDING).exists():
            return  # stopped while the variant was embedded: it never serves
        chatbot_space_test_begin(chatbot=test.chatbot, space=version.space, traffic_percent=test.traffic_percent)
        ModelVersion.objects.filter(pk=version.pk).update(status=VStatus.TESTING, deploy_progress=100, error="")
        ABTest.objects.filter(pk=test.pk).update(status=TStatus.RUNNING, progress=100, started_at=timezone.now())

    failed = model_version_embed(version, progress=progress, then=begin)
    if failed:
        ABTest.objects.filter(pk=test.pk, status=TStatus.EMBEDDING).update(
            status=TStatus.FAILED, reason=failed, ended_at=timezone.now()
        )
        return "failed"
    return ABTest.objects.get(pk=test.pk).status


def _live(tenant: Tenant, chatbot: Chatbot) -> ABTest:
    if chatbot.tenant_id != tenant.pk:
        raise NotFound("Chatbot not found.", field="chatbot_id")
    test = (
        ABTest.objects.select_for_update()
        .filter(chatbot=chatbot, status__in=ABTest.LIVE)
        .select_related("variant__space")
        .first()
    )
    if test is None:
        raise Conflict("No A/B test is running for this chatbot.")
    return test


def ab_test_promote(*, tenant: Tenant, chatbot: Chatbot, requested_by: str = "") -> ABTest:
    """The variant serves every search from now on; the control becomes the previous version."""
    search_logs_flush()
    with transaction.atomic():
        test = _live(tenant, chatbot)
        if test.status != TStatus.RUNNING:
            raise Conflict("The variant is still being embedded; it can be promoted once the test runs.")
        result = ab_test_report(test)
        _switch(chatbot, test.variant)
        _end(test, TStatus.PROMOTED, f"Promoted by {requested_by or 'a user'}: {result['verdict']}", result)
        audit_record(action="abtest.promote", tenant_id=tenant.pk, target=f"chatbot:{chatbot.pk}",
                     variant=test.variant.number, verdict=result["verdict"])  # fmt: skip
    return test


def ab_test_stop(
    *, tenant: Tenant, chatbot: Chatbot, requested_by: str = "", status=TStatus.STOPPED, reason: str = ""
) -> ABTest:
    """The test ends and the control keeps serving; the variant is a candidate again."""
    search_logs_flush()
    with transaction.atomic():
        test = _live(tenant, chatbot)
        result = ab_test_report(test) if test.status == TStatus.RUNNING else {}
        chatbot_space_test_end(chatbot=chatbot, space=test.variant.space)
        ModelVersion.objects.filter(pk=test.variant_id, status__in=[VStatus.TESTING, VStatus.DEPLOYING]).update(
            status=VStatus.CANDIDATE
        )
        if not reason:
            reason = f"Stopped by {requested_by or 'a user'}" + (f": {result['verdict']}" if result else ".")
        _end(test, status, reason, result)
        audit_record(action=f"abtest.{status}", tenant_id=tenant.pk, target=f"chatbot:{chatbot.pk}",
                     variant=test.variant.number, reason=reason)  # fmt: skip
    return test


def _end(test: ABTest, status: str, reason: str, result: dict) -> None:
    test.status, test.reason, test.result, test.ended_at = status, reason[:2000], result, timezone.now()
    test.save(update_fields=["status", "reason", "result", "ended_at"])


def ab_tests_check() -> dict:
    """Scheduled: end tests past ``max_days`` (control kept) and trip guardrails. Idempotent."""
    from tenants.scoping import cross_tenant_context, tenant_context

    with cross_tenant_context("ab-test-check"):
        rows = list(ABTest.objects.filter(status=TStatus.RUNNING).values_list("pk", "tenant_id"))
    ended = tripped = 0
    search_logs_flush()
    for test_id, tenant_id in rows:
        with tenant_context(tenant_id):
            test = ABTest.objects.select_related("chatbot", "tenant").get(pk=test_id)
            if timezone.now() >= test.started_at + timedelta(days=test.max_days):
                ab_test_stop(tenant=test.tenant, chatbot=test.chatbot, status=TStatus.ENDED,
                             reason=f"Ended after {test.max_days} days; the control keeps serving.")  # fmt: skip
                ended += 1
                continue
            guard = ab_test_report(test)["guardrail"]
            if guard:
                logger.warning("A/B test %s stopped by a guardrail: %s", test.pk, guard)
                ab_test_stop(tenant=test.tenant, chatbot=test.chatbot, status=TStatus.GUARDRAIL,
                             reason=f"Guardrail: {guard} The control keeps serving.")  # fmt: skip
                tripped += 1
    return {"running": len(rows) - ended - tripped, "ended": ended, "guardrail": tripped}


def _z(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """Pooled two-proportion z of arm 2's rate over arm 1's (None without data on both sides;
    0 when both rates are the same extreme)."""
    if not n1 or not n2:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return 0.0 if spread == 0 else (x2 / n2 - x1 / n1) / spread


def _two_proportions(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """Two-sided p of a pooled two-proportion z-test (None without data on both sides)."""
    z = _z(x1, n1, x2, n2)
    return None if z is None else 2 * (1 - NORMAL.cdf(abs(z)))


def _one_sided_worse(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """One-sided p that arm 2's rate is above arm 1's."""
    z = _z(x1, n1, x2, n2)
    return None if z is None else 1 - NORMAL.cdf(z)


def feedback_needed(p1: float, p2: float, *, alpha: float, power: float) -> int:
    """Feedback per arm to detect rates p1 vs p2 with a two-sided test at ``alpha`` and ``power``."""
    delta = abs(p2 - p1)
    if delta == 0:
        return 0
    pooled = (p1 + p2) / 2
    a, b = NORMAL.inv_cdf(1 - alpha / 2), NORMAL.inv_cdf(power)
    top = a * math.sqrt(2 * pooled * (1 - pooled)) + b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(top**2 / delta**2)


def _rates(arm: dict) -> dict:
    searches = arm["searches"]
    return {
        **arm,
        "helpful_rate": round(arm["helpful"] / arm["feedback"], 4) if arm["feedback"] else None,
        "zero_result_rate": round(arm["zero_results"] / searches, 4) if searches else None,
        "low_score_rate": round(arm["low_score"] / searches, 4) if searches else None,
    }


def ab_test_report(test: ABTest, *, arms: dict | None = None) -> dict:
    """The live comparison (or, for a test that ended, as it ended)."""
    if test.status not in ABTest.LIVE and test.result:
        return test.result
    arms = arms or ab_test_arms(test=test)
    control, variant = _rates(arms["control"]), _rates(arms["variant"])
    alpha, power = settings.AB_TEST_ALPHA, settings.AB_TEST_POWER
    p = _two_proportions(control["helpful"], control["feedback"], variant["helpful"], variant["feedback"])
    difference = None
    if control["helpful_rate"] is not None and variant["helpful_rate"] is not None:
        difference = round(variant["helpful_rate"] - control["helpful_rate"], 4)
    searches = control["searches"] + variant["searches"]
    # what the chosen power needs: the observed difference if there is one, else the smallest worth seeing
    base = control["helpful_rate"] if control["helpful_rate"] is not None else 0.5
    effect = abs(difference) if difference else settings.AB_TEST_MIN_EFFECT
    target = min(max(base + effect if base + effect < 1 else base - effect, 0.0), 1.0)
    per_arm_feedback = feedback_needed(base, target, alpha=alpha, power=power)
    still_needed = None
    feedback_share = (control["feedback"] + variant["feedback"]) / searches if searches else 0
    share = test.traffic_percent / 100
    if feedback_share > 0:
        per_arm_searches = math.ceil(per_arm_feedback / feedback_share)
        arm_needs = max(per_arm_searches, test.min_searches)
        # the variant arm fills at traffic_percent, the control at the rest
        still_needed = max(
            0,
            math.ceil((arm_needs - variant["searches"]) / share) if variant["searches"] < arm_needs else 0,
            math.ceil((arm_needs - control["searches"]) / (1 - share)) if control["searches"] < arm_needs else 0,
        )
    enough = min(control["searches"], variant["searches"]) >= test.min_searches
    significant = p is not None and p < alpha and enough
    report = {
        "test_id": test.pk,
        "status": test.status,
        "test": "two-proportion z-test (pooled, two-sided) on the helpful-feedback rate",
        "alpha": alpha,
        "power": power,
        "arms": {"control": control, "variant": variant},
        "searches": searches,
        "difference": difference,
        "p_value": None if p is None else round(p, 4),
        "significant": significant,
        "winner": ("variant" if difference > 0 else "control") if significant and difference else None,
        "feedback_needed_per_arm": per_arm_feedback,
        "searches_still_needed": still_needed,
        "guardrail": _guardrail(control, variant),
    }
    report["verdict"] = _verdict(report, enough, test.min_searches)
    return report


def _guardrail(control: dict, variant: dict) -> str:
    """Why the variant must stop (empty: it may go on)."""
    least = settings.AB_GUARDRAIL_MIN_SEARCHES
    if min(control["searches"], variant["searches"]) < least:
        return ""
    zero_c, zero_v = control["zero_result_rate"], variant["zero_result_rate"]
    p = _one_sided_worse(control["zero_results"], control["searches"], variant["zero_results"], variant["searches"])
    if zero_v - zero_c > settings.AB_GUARDRAIL_ZERO_RESULT_POINTS and p is not None and p < settings.AB_GUARDRAIL_P:
        return (f"the variant's zero-result rate {zero_v:.1%} is clearly worse than the control's {zero_c:.1%} "
                f"(p = {p:.3g}).")  # fmt: skip
    slow_c, slow_v = control["p95_ms"], variant["p95_ms"]
    if (
        slow_c is not None
        and slow_v is not None
        and slow_v > slow_c * settings.AB_GUARDRAIL_LATENCY_RATIO
        and slow_v - slow_c > settings.AB_GUARDRAIL_LATENCY_MS
    ):
        return f"the variant's p95 latency {slow_v:.0f} ms is clearly worse than the control's {slow_c:.0f} ms."
    return ""


def _verdict(report: dict, enough: bool, min_searches: int) -> str:
    searches = f"{report['searches']:,} searches"
    if report["difference"] is None:
        return f"No feedback on both arms yet; {searches}."
    points = report["difference"] * 100
    p = report["p_value"]
    shown = "p < 0.0001" if p < 0.0001 else f"p = {p:.2g}"
    text = f"variant {points:+.1f} pp helpful, {shown}, {searches}"
    if report["significant"]:
        return text + f": the {report['winner']} is better."
    if not enough:
        return text + f"; not decided until each arm has {min_searches:,} searches."
    needed = report["searches_still_needed"]
    more = f"; about {needed:,} more searches for {report['power']:.0%} power" if needed else ""
    return text + f": no significant difference yet{more}."
