from __future__ import annotations

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.errors import NotFound, PermissionDenied
from tenants.models import ApiKey, Chatbot, Membership, Tenant
from tenants.principal import SearchPrincipal, principal_for_member, scope_refused
from tenants.scoping import tenant_context_enter, tenant_context_exit
from tenants.selectors import chatbot_get, chatbot_list, membership_get

SESSION_TENANT_KEY = "tenant_id"


class TenantApi(APIView):
    """Base of every tenant API: resolves the tenant once from the credentials, fails closed.

    Each API says which key scope each of its methods needs (``scopes``: method -> one scope, or a
    tuple of which any will do); a method it does not list is refused to every key. API keys act
    for their tenant (and, if limited, one chatbot) within their scopes; dashboard sessions act
    for the user's current membership: any member may search and read, owners and admins write.
    """

    tenant: Tenant
    principal: SearchPrincipal
    api_key: ApiKey | None = None
    membership: Membership | None = None
    scopes: dict[str, str | tuple[str, ...]] = {}

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if isinstance(request.auth, ApiKey):
            self.api_key = request.auth
            self.tenant = request.auth.tenant
            self.principal = request.user.principal  # ApiKeyAuthentication's
        else:
            self.membership = membership_get(user=request.user, tenant_id=request.session.get(SESSION_TENANT_KEY))
            if self.membership is None:
                raise NotFound("You are not a member of any tenant.")
            self.tenant = self.membership.tenant
            self.principal = principal_for_member(self.membership)
        self._tenant_token = tenant_context_enter(self.tenant)
        self._require_scope(request.method)

    def required_scopes(self, method: str) -> tuple[str, ...]:
        method = method.lower()
        needed = self.scopes.get("get" if method == "head" else method)
        if needed is None:
            return ("search",) if method == "options" else ()
        return (needed,) if isinstance(needed, str) else tuple(needed)

    def _require_scope(self, method: str) -> None:
        needed = self.required_scopes(method)
        if self.api_key is not None:
            if not any(self.api_key.allows(scope) for scope in needed):
                raise scope_refused(self.api_key.scope_label, needed)
        elif needed == ("write",) and self.membership is not None and not self.membership.can_write:
            raise PermissionDenied("Your role is 'viewer': ask an owner or admin to make this change.")

    def finalize_response(self, request, response, *args, **kwargs):
        token = getattr(self, "_tenant_token", None)
        if token is not None:
            tenant_context_exit(token)
            self._tenant_token = None
        return super().finalize_response(request, response, *args, **kwargs)

    def get_chatbot(self, chatbot_id) -> Chatbot:
        return chatbot_get(tenant=self.tenant, chatbot_id=chatbot_id, api_key=self.api_key)


class TenantAutoSchema(AutoSchema):
    """Every operation says which API key scopes it accepts (``x-required-scopes``; the schema's
    post-processing repeats it in the description)."""

    def _map_serializer(self, serializer, direction, bypass_extensions=False):
        schema = super()._map_serializer(serializer, direction, bypass_extensions)
        if direction == "request" and getattr(serializer, "strict", False):
            schema["additionalProperties"] = False  # StrictSerializer refuses unknown fields
        return schema

    def get_extensions(self):
        extensions = dict(super().get_extensions())
        if isinstance(self.view, TenantApi):
            extensions["x-required-scopes"] = list(self.view.required_scopes(self.method))
        return extensions


class ChatbotOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Chatbot
        fields = ["id", "name", "description", "embedding_model", "chunk_size", "chunk_overlap", "created_at"]


class ChatbotListOutputSerializer(serializers.Serializer):
    chatbots = ChatbotOutputSerializer(many=True)


class ChatbotListApi(TenantApi):
    scopes = {"get": "read"}

    @extend_schema(operation_id="chatbots_list", responses={200: ChatbotListOutputSerializer}, tags=["chatbots"])
    def get(self, request):
        chatbots = chatbot_list(tenant=self.tenant, api_key=self.api_key)
        return Response({"chatbots": ChatbotOutputSerializer(chatbots, many=True).data})
