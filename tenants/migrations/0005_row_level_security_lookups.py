"""The two lookups that must find a row before the tenant is known: which tenant an API key
belongs to, and the search fast path's key/chatbot/space row. SECURITY DEFINER functions owned
by the owner role, each setting ``app.cross_tenant`` for its query and putting it back (so they
also work where the owner is held to row-level security) and executable by the app role only (grants in
``tenants/rls.py``). Policies themselves are applied after every migrate (``tenants/rls.py``)."""

from django.db import migrations

FUNCTIONS = """
CREATE OR REPLACE FUNCTION app_api_key_tenant(p_key_hash text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    previous text := current_setting('app.cross_tenant', true);
    found bigint;
BEGIN
    PERFORM set_config('app.cross_tenant', 'api-key-lookup', true);
    SELECT k.tenant_id INTO found FROM tenants_apikey k JOIN tenants_tenant t ON t.id = k.tenant_id AND t.is_active
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now());
    PERFORM set_config('app.cross_tenant', coalesce(previous, ''), true);
    RETURN found;
END $$;

CREATE OR REPLACE FUNCTION app_search_context(p_key_hash text, p_chatbot_id bigint)
RETURNS TABLE (key_id bigint, tenant_id bigint, last_used_at timestamptz, content_version bigint, space_id bigint,
               provider varchar, model_name varchar, version varchar, dimensions integer,
               expires_at timestamptz, plan varchar)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    previous text := current_setting('app.cross_tenant', true);
BEGIN
    PERFORM set_config('app.cross_tenant', 'api-key-lookup', true);
    RETURN QUERY
    SELECT k.id, k.tenant_id, k.last_used_at, c.content_version, s.id, s.provider, s.model_name, s.version,
           s.dimensions, k.expires_at, t.plan
    FROM tenants_apikey k
    JOIN tenants_tenant t ON t.id = k.tenant_id AND t.is_active
    JOIN tenants_chatbot c ON c.id = p_chatbot_id AND c.tenant_id = k.tenant_id
    JOIN knowledge_chatbotspace cs ON cs.chatbot_id = c.id AND cs.role = 'active'
    JOIN knowledge_embeddingspace s ON s.id = cs.space_id
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
      AND (k.chatbot_id IS NULL OR k.chatbot_id = c.id);
    PERFORM set_config('app.cross_tenant', coalesce(previous, ''), true);
END $$;
"""

DROP = """
DROP FUNCTION IF EXISTS app_api_key_tenant(text);
DROP FUNCTION IF EXISTS app_search_context(text, bigint);
"""


class Migration(migrations.Migration):
    dependencies = [("tenants", "0004_auditevent"), ("knowledge", "0003_space_access_changed_notify")]

    operations = [migrations.RunSQL(FUNCTIONS, DROP)]
