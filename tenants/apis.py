from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.errors import NotFound, PermissionDenied
from tenants.models import ApiKey, Chatbot, Membership, Tenant
from tenants.scoping import tenant_context_enter, tenant_context_exit
from tenants.selectors import chatbot_get, chatbot_list, membership_get

SESSION_TENANT_KEY = "tenant_id"


class TenantApi(APIView):
    """Base of every tenant API: resolves the tenant once from the credentials, fails closed.

    API keys act for their tenant (and, if limited, one chatbot), writing only with the
    ``search_upload`` scope;
    dashboard sessions act for the user's current membership with that member's role.
    """

    tenant: Tenant
    api_key: ApiKey | None = None
    membership: Membership | None = None

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if isinstance(request.auth, ApiKey):
            self.api_key = request.auth
            self.tenant = request.auth.tenant
        else:
            self.membership = membership_get(user=request.user, tenant_id=request.session.get(SESSION_TENANT_KEY))
            if self.membership is None:
                raise NotFound("You are not a member of any tenant.")
            self.tenant = self.membership.tenant
        self._tenant_token = tenant_context_enter(self.tenant)

    def finalize_response(self, request, response, *args, **kwargs):
        token = getattr(self, "_tenant_token", None)
        if token is not None:
            tenant_context_exit(token)
            self._tenant_token = None
        return super().finalize_response(request, response, *args, **kwargs)

    def get_chatbot(self, chatbot_id) -> Chatbot:
        return chatbot_get(tenant=self.tenant, chatbot_id=chatbot_id, api_key=self.api_key)

    def require_write(self) -> None:
        if self.api_key is not None and not self.api_key.can_upload:
            raise PermissionDenied(
                "This API key may only search: use a key with the 'search and upload' scope to change content."
            )
        if self.membership is not None and not self.membership.can_write:
            raise PermissionDenied("Your role is 'viewer': ask an owner or admin to make this change.")


class ChatbotOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Chatbot
        fields = ["id", "name", "description", "embedding_model", "chunk_size", "chunk_overlap", "created_at"]


class ChatbotListOutputSerializer(serializers.Serializer):
    chatbots = ChatbotOutputSerializer(many=True)


class ChatbotListApi(TenantApi):
    @extend_schema(operation_id="chatbots_list", responses={200: ChatbotListOutputSerializer}, tags=["chatbots"])
    def get(self, request):
        chatbots = chatbot_list(tenant=self.tenant, api_key=self.api_key)
        return Response({"chatbots": ChatbotOutputSerializer(chatbots, many=True).data})
