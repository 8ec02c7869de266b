"""The fast path's key/chatbot row carries the whole principal (scopes, the key's chatbot
restriction, its prefix): the scope and restriction are checked in Python by the one access check
every search path runs (``search.services.search_access_check``), not a second time in SQL."""

import importlib

from django.db import migrations

PREVIOUS = importlib.import_module("tenants.migrations.0007_search_context_without_space").FUNCTION

FUNCTION = """
DROP FUNCTION IF EXISTS app_search_context(text, bigint);
CREATE FUNCTION app_search_context(p_key_hash text, p_chatbot_id bigint)
RETURNS TABLE (key_id bigint, tenant_id bigint, last_used_at timestamptz, content_version bigint,
               expires_at timestamptz, plan varchar, scopes varchar[], key_chatbot_id bigint, prefix varchar)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    previous text := current_setting('app.cross_tenant', true);
BEGIN
    PERFORM set_config('app.cross_tenant', 'api-key-lookup', true);
    RETURN QUERY
    SELECT k.id, k.tenant_id, k.last_used_at, c.content_version, k.expires_at, t.plan,
           k.scopes::varchar[], k.chatbot_id, k.prefix
    FROM tenants_apikey k
    JOIN tenants_tenant t ON t.id = k.tenant_id AND t.is_active
    JOIN tenants_chatbot c ON c.id = p_chatbot_id AND c.tenant_id = k.tenant_id
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now());
    PERFORM set_config('app.cross_tenant', coalesce(previous, ''), true);
END $$;
"""


class Migration(migrations.Migration):
    dependencies = [("tenants", "0007_search_context_without_space")]

    operations = [
        migrations.RunSQL(FUNCTION, PREVIOUS)
    ]
