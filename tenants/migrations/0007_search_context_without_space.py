"""The fast path's key/chatbot row no longer names the embedding space: one selector
(``search.services.serving``) decides which space serves a chatbot's searches, on every path."""

from django.db import migrations

FUNCTION = """
DROP FUNCTION IF EXISTS app_search_context(text, bigint);
CREATE FUNCTION app_search_context(p_key_hash text, p_chatbot_id bigint)
RETURNS TABLE (key_id bigint, tenant_id bigint, last_used_at timestamptz, content_version bigint,
               expires_at timestamptz, plan varchar)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    previous text := current_setting('app.cross_tenant', true);
BEGIN
    PERFORM set_config('app.cross_tenant', 'api-key-lookup', true);
    RETURN QUERY
    SELECT k.id, k.tenant_id, k.last_used_at, c.content_version, k.expires_at, t.plan
    FROM tenants_apikey k
    JOIN tenants_tenant t ON t.id = k.tenant_id AND t.is_active
    JOIN tenants_chatbot c ON c.id = p_chatbot_id AND c.tenant_id = k.tenant_id
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
      AND (k.chatbot_id IS NULL OR k.chatbot_id = c.id) AND 'search' = ANY(k.scopes);
    PERFORM set_config('app.cross_tenant', coalesce(previous, ''), true);
END $$;
"""

BACKWARD = """
DROP FUNCTION IF EXISTS app_search_context(text, bigint);
CREATE FUNCTION app_search_context(p_key_hash text, p_chatbot_id bigint)
RETURNS TABLE (key_id bigint, tenant_id bigint, last_used_at timestamptz, content_version bigint, space_id bigint,
               provider varchar, model_name varchar, version varchar, dimensions integer,
               expires_at timestamptz, plan varchar)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT k.id, k.tenant_id, k.last_used_at, c.content_version, s.id, s.provider, s.model_name, s.version,
           s.dimensions, k.expires_at, t.plan
    FROM tenants_apikey k
    JOIN tenants_tenant t ON t.id = k.tenant_id AND t.is_active
    JOIN tenants_chatbot c ON c.id = p_chatbot_id AND c.tenant_id = k.tenant_id
    JOIN knowledge_chatbotspace cs ON cs.chatbot_id = c.id AND cs.role = 'active'
    JOIN knowledge_embeddingspace s ON s.id = cs.space_id
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
      AND (k.chatbot_id IS NULL OR k.chatbot_id = c.id) AND 'search' = ANY(k.scopes);
END $$;
"""


class Migration(migrations.Migration):
    dependencies = [("tenants", "0006_apikey_scopes")]

    operations = [migrations.RunSQL(FUNCTION, BACKWARD)]
