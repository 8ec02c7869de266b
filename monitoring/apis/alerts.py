"""Alert rules and alerts: ``/api/alerts/rules[/{id}]``, ``/api/alerts[/{id}]``,
``/api/alerts/{id}/acknowledge``, ``/api/alerts/{id}/resolve``.

Who may do what: any read key or member reads the tenant's rules and alerts; owners, admins and
write-scope keys change them. Global rules (system figures, no tenant) and their alerts are staff
sessions' only; to everyone else they do not exist (404). Another tenant's ids are 404.
"""

from __future__ import annotations

from contextlib import nullcontext

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from monitoring.alerts import selectors
from monitoring.alerts.evaluate import alert_acknowledge, alert_resolve_by
from monitoring.alerts.rules import alert_rule_create, alert_rule_delete, alert_rule_update
from monitoring.alerts.sources import METRICS
from monitoring.models import Alert, AlertRule
from tenants.apis import TenantApi
from tenants.errors import DomainError, PermissionDenied
from tenants.scoping import cross_tenant_context
from tenants.serializers import (
    JsonBooleanField,
    JsonFloatField,
    JsonIntegerField,
    JsonObjectField,
    StrictSerializer,
    TextField,
    id_field,
    query_params,
)

STAFF_ONLY = "Global rules watch the whole system: only staff (signed in to the dashboard) see and change them."


def global_scope(owner) -> object:
    """Rows of no tenant are written on the maintenance role's connection (staff only)."""
    return cross_tenant_context("staff-global-alerts") if owner.tenant_id is None else nullcontext()


def rule_payload(rule: AlertRule, *, show_secret: bool = False) -> dict:
    channels = dict(rule.channels or {})
    if channels.get("webhook"):
        hook = channels["webhook"]
        channels["webhook"] = {"url": hook.get("url"), "secret_set": bool(hook.get("secret"))}
        if show_secret:
            channels["webhook"]["secret"] = hook.get("secret")
    return {
        "id": rule.pk,
        "tenant_id": rule.tenant_id,
        "chatbot_id": rule.chatbot_id,
        "scope": rule.scope,
        "name": rule.name,
        "description": rule.description,
        "metric": rule.metric,
        "unit": METRICS[rule.metric].unit if rule.metric in METRICS else "",
        "condition": rule.condition,
        "threshold": rule.threshold,
        "window_minutes": rule.window_minutes,
        "severity": rule.severity,
        "cooldown_minutes": rule.cooldown_minutes,
        "channels": channels,
        "enabled": rule.enabled,
        "is_default": rule.is_default,
        "created_at": rule.created_at,
        "updated_at": rule.updated_at,
    }


def alert_payload(alert: Alert, *, events: list | None = None) -> dict:
    data = {
        "id": alert.pk,
        "rule_id": alert.rule_id,
        "rule_name": alert.rule.name,
        "metric": alert.rule.metric,
        "severity": alert.rule.severity,
        "threshold": alert.rule.threshold,
        "tenant_id": alert.tenant_id,
        "chatbot_id": alert.chatbot_id,
        "scope_key": alert.scope_key,
        "state": alert.state,
        "value": alert.value,
        "message": alert.message,
        "notified": alert.notified,
        "first_fired_at": alert.first_fired_at,
        "last_evaluated_at": alert.last_evaluated_at,
        "resolved_at": alert.resolved_at,
        "acknowledged_by": alert.acknowledged_by.get_username() if alert.acknowledged_by_id else None,
        "acknowledged_at": alert.acknowledged_at,
    }
    if events is not None:
        data["events"] = [{"kind": e.kind, "value": e.value, "at": e.at, "detail": e.detail} for e in events]
    return data


class AlertRuleCreateRequestSerializer(StrictSerializer):
    name = TextField(max_length=200, required=False)
    description = TextField(required=False, allow_blank=True, max_length=2000)
    scope = serializers.ChoiceField(
        choices=AlertRule.Scope.values,
        required=False,
        help_text="chatbot (default with chatbot_id, or each chatbot), tenant, or global (staff).",
    )
    chatbot_id = id_field(json=True, required=False, allow_null=True)
    metric = serializers.ChoiceField(choices=list(METRICS), help_text="A metric of the registry.")
    condition = serializers.ChoiceField(choices=AlertRule.Condition.values, default=">")
    threshold = JsonFloatField()
    window_minutes = JsonIntegerField(min_value=1, max_value=31 * 24 * 60, default=60)
    severity = serializers.ChoiceField(choices=AlertRule.Severity.values, default="warning")
    cooldown_minutes = JsonIntegerField(min_value=0, max_value=31 * 24 * 60, default=60)
    channels = JsonObjectField(required=False, help_text='{"email": ["a@b.c"], "webhook": {"url", "secret"}}')
    enabled = JsonBooleanField(required=False, default=True)


class AlertRuleUpdateRequestSerializer(AlertRuleCreateRequestSerializer):
    metric = serializers.ChoiceField(choices=list(METRICS), required=False)
    condition = serializers.ChoiceField(choices=AlertRule.Condition.values, required=False)
    threshold = JsonFloatField(required=False)
    window_minutes = JsonIntegerField(min_value=1, max_value=31 * 24 * 60, required=False)
    severity = serializers.ChoiceField(choices=AlertRule.Severity.values, required=False)
    cooldown_minutes = JsonIntegerField(min_value=0, max_value=31 * 24 * 60, required=False)
    enabled = JsonBooleanField(required=False)


class AlertRuleSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    tenant_id = serializers.IntegerField(allow_null=True)
    chatbot_id = serializers.IntegerField(allow_null=True)
    scope = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    metric = serializers.CharField()
    unit = serializers.CharField()
    condition = serializers.CharField()
    threshold = serializers.FloatField()
    window_minutes = serializers.IntegerField()
    severity = serializers.CharField()
    cooldown_minutes = serializers.IntegerField()
    channels = serializers.JSONField(help_text="The webhook's secret is shown only when the rule is created.")
    enabled = serializers.BooleanField()
    is_default = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class AlertRuleListSerializer(serializers.Serializer):
    rules = AlertRuleSerializer(many=True)
    metrics = serializers.JSONField(help_text="The metrics a rule may watch: name -> description, unit, scopes.")


class AlertEventSerializer(serializers.Serializer):
    kind = serializers.CharField()
    value = serializers.FloatField(allow_null=True)
    at = serializers.DateTimeField()
    detail = serializers.JSONField()


class AlertSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    rule_id = serializers.IntegerField()
    rule_name = serializers.CharField()
    metric = serializers.CharField()
    severity = serializers.CharField()
    threshold = serializers.FloatField()
    tenant_id = serializers.IntegerField(allow_null=True)
    chatbot_id = serializers.IntegerField(allow_null=True)
    scope_key = serializers.CharField()
    state = serializers.CharField()
    value = serializers.FloatField(allow_null=True)
    message = serializers.CharField()
    notified = serializers.BooleanField()
    first_fired_at = serializers.DateTimeField()
    last_evaluated_at = serializers.DateTimeField()
    resolved_at = serializers.DateTimeField(allow_null=True)
    acknowledged_by = serializers.CharField(allow_null=True)
    acknowledged_at = serializers.DateTimeField(allow_null=True)


class AlertDetailSerializer(AlertSerializer):
    events = AlertEventSerializer(many=True)


class AlertListSerializer(serializers.Serializer):
    alerts = AlertSerializer(many=True)


class AlertListQuerySerializer(serializers.Serializer):
    state = serializers.ChoiceField(
        choices=selectors.STATES, default="active", help_text="active: firing + acknowledged"
    )
    chatbot_id = id_field(required=False)


class _AlertsApi(TenantApi):
    parser_classes = [JSONParser]

    @property
    def is_staff(self) -> bool:
        user = self.request.user
        return self.api_key is None and bool(user and user.is_authenticated and user.is_staff)

    def actor(self) -> dict:
        if self.api_key is not None:
            return {"user": None, "by": f"API key {self.api_key.prefix}"}
        return {"user": self.request.user, "by": self.request.user.get_username()}

    def chatbot_from(self, data: dict):
        chatbot_id = data.pop("chatbot_id", None)
        return self.get_chatbot(chatbot_id) if chatbot_id is not None else None

    def rule(self, rule_id) -> AlertRule:
        return selectors.alert_rule_get(tenant=self.tenant, rule_id=rule_id, staff=self.is_staff)

    def alert(self, alert_id) -> Alert:
        return selectors.alert_get(tenant=self.tenant, alert_id=alert_id, staff=self.is_staff)


class AlertRuleListApi(_AlertsApi):
    scopes = {"get": "read", "post": "write"}

    @extend_schema(operation_id="alert_rules_list", responses={200: AlertRuleListSerializer}, tags=["alerts"])
    def get(self, request):
        rules = list(selectors.alert_rules(tenant=self.tenant))
        if self.is_staff:
            rules += selectors.global_alert_rules()
        metrics = {m.name: {"description": m.description, "unit": m.unit, "scopes": m.scopes} for m in METRICS.values()}
        return Response({"rules": [rule_payload(r) for r in rules], "metrics": metrics})

    @extend_schema(operation_id="alert_rules_create", request=AlertRuleCreateRequestSerializer,
                   responses={201: AlertRuleSerializer}, tags=["alerts"])  # fmt: skip
    def post(self, request):
        params = AlertRuleCreateRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = dict(params.validated_data)
        chatbot = self.chatbot_from(data)
        if data.get("scope") == "global":
            if not self.is_staff:
                raise PermissionDenied(STAFF_ONLY)
            if chatbot is not None:
                raise DomainError("A global rule names no chatbot.", field="chatbot_id")
            with cross_tenant_context("staff-global-alert-rules"):
                rule = alert_rule_create(tenant=None, **data)
        else:
            rule = alert_rule_create(tenant=self.tenant, chatbot=chatbot, **data)
        return Response(rule_payload(rule, show_secret=True), status=status.HTTP_201_CREATED)


class AlertRuleDetailApi(_AlertsApi):
    scopes = {"get": "read", "patch": "write", "delete": "write"}

    def _writable(self, rule: AlertRule) -> None:
        if rule.tenant_id is None and not self.is_staff:
            raise PermissionDenied(STAFF_ONLY)

    @extend_schema(operation_id="alert_rules_get", responses={200: AlertRuleSerializer}, tags=["alerts"])
    def get(self, request, rule_id: int):
        return Response(rule_payload(self.rule(rule_id)))

    @extend_schema(operation_id="alert_rules_update", request=AlertRuleUpdateRequestSerializer,
                   responses={200: AlertRuleSerializer}, tags=["alerts"])  # fmt: skip
    def patch(self, request, rule_id: int):
        rule = self.rule(rule_id)
        self._writable(rule)
        params = AlertRuleUpdateRequestSerializer(data=request.data, partial=True)
        params.is_valid(raise_exception=True)
        changes = dict(params.validated_data)
        if "chatbot_id" in changes:
            changes["chatbot"] = self.chatbot_from(changes)
        new_scope = changes.get("scope")
        if new_scope and (new_scope == "global") != (rule.tenant_id is None):
            raise DomainError(
                "A rule's owner cannot change between a tenant and global: create a new rule.", field="scope"
            )
        with global_scope(rule):
            rule = alert_rule_update(rule=rule, changes=changes)
        return Response(rule_payload(rule))

    @extend_schema(operation_id="alert_rules_delete", responses={204: None}, tags=["alerts"])
    def delete(self, request, rule_id: int):
        rule = self.rule(rule_id)
        self._writable(rule)
        with global_scope(rule):
            alert_rule_delete(rule=rule)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AlertListApi(_AlertsApi):
    scopes = {"get": "read"}

    @extend_schema(operation_id="alerts_list", parameters=[AlertListQuerySerializer],
                   responses={200: AlertListSerializer}, tags=["alerts"])  # fmt: skip
    def get(self, request):
        params = AlertListQuerySerializer(data=query_params(request))
        params.is_valid(raise_exception=True)
        state, chatbot_id = params.validated_data["state"], params.validated_data.get("chatbot_id")
        chatbot = self.get_chatbot(chatbot_id) if chatbot_id is not None else None
        alerts = selectors.alerts_list(tenant=self.tenant, state=state, chatbot=chatbot)
        if self.is_staff and chatbot is None:
            alerts += selectors.global_alerts(state=state)
        return Response({"alerts": [alert_payload(a) for a in alerts]})


class AlertDetailApi(_AlertsApi):
    scopes = {"get": "read"}

    @extend_schema(operation_id="alerts_get", responses={200: AlertDetailSerializer}, tags=["alerts"])
    def get(self, request, alert_id: int):
        alert = self.alert(alert_id)
        return Response(alert_payload(alert, events=selectors.alert_events(alert=alert)))


class AlertAcknowledgeApi(_AlertsApi):
    scopes = {"post": "write"}

    @extend_schema(operation_id="alerts_acknowledge", request=None, responses={200: AlertDetailSerializer},
                   tags=["alerts"])  # fmt: skip
    def post(self, request, alert_id: int):
        alert = self.alert(alert_id)
        with global_scope(alert):
            alert = alert_acknowledge(alert=alert, **self.actor())
            return Response(alert_payload(alert, events=list(alert.events.all())))


class AlertResolveApi(_AlertsApi):
    scopes = {"post": "write"}

    @extend_schema(operation_id="alerts_resolve", request=None, responses={200: AlertDetailSerializer},
                   tags=["alerts"])  # fmt: skip
    def post(self, request, alert_id: int):
        alert = self.alert(alert_id)
        with global_scope(alert):
            alert = alert_resolve_by(alert=alert, **self.actor())
            return Response(alert_payload(alert, events=list(alert.events.all())))
