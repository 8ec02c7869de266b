"""API key scopes become least-privilege and combinable: ``search`` (search and feedback),
``read`` (documents, chunks, logs, analytics), ``write`` (upload, reprocess, delete). Keys that
could upload get all three; search-only keys keep only ``search`` (they could read everything
before). The fast path's lookup requires ``search``; changing a key's scopes or a tenant's plan
notifies ``access_changed`` like any other access change."""

import django.contrib.postgres.fields
from django.db import migrations, models

import tenants.models

FUNCTION = """
CREATE OR REPLACE FUNCTION app_search_context(p_key_hash text, p_chatbot_id bigint)
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

DROP TRIGGER IF EXISTS apikey_access_changed ON tenants_apikey;
CREATE TRIGGER apikey_access_changed
    AFTER UPDATE OF revoked_at, expires_at, chatbot_id, tenant_id, key_hash, scopes OR DELETE ON tenants_apikey
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed_notify();
DROP TRIGGER IF EXISTS tenant_access_changed ON tenants_tenant;
CREATE TRIGGER tenant_access_changed
    AFTER UPDATE OF is_active, plan OR DELETE ON tenants_tenant
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed_notify();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS apikey_access_changed ON tenants_apikey;
CREATE TRIGGER apikey_access_changed
    AFTER UPDATE OF revoked_at, expires_at, chatbot_id, tenant_id, key_hash OR DELETE ON tenants_apikey
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed_notify();
DROP TRIGGER IF EXISTS tenant_access_changed ON tenants_tenant;
CREATE TRIGGER tenant_access_changed
    AFTER UPDATE OF is_active OR DELETE ON tenants_tenant
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed_notify();
"""


def scopes_from_scope(apps, schema_editor):
    # on the migrating connection (the owner's), whatever scope the caller runs in
    keys = apps.get_model("tenants", "ApiKey").objects.using(schema_editor.connection.alias)
    keys.filter(scope="search_upload").update(scopes=["search", "read", "write"])
    keys.exclude(scope="search_upload").update(scopes=["search"])


def scope_from_scopes(apps, schema_editor):
    keys = apps.get_model("tenants", "ApiKey").objects.using(schema_editor.connection.alias)
    keys.filter(scopes__contains=["write"]).update(scope="search_upload")
    keys.exclude(scopes__contains=["write"]).update(scope="search")


class Migration(migrations.Migration):
    dependencies = [("tenants", "0005_row_level_security_lookups")]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="scopes",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.CharField(
                    choices=[("search", "search"), ("read", "read"), ("write", "write")], max_length=10
                ),
                default=tenants.models.default_key_scopes,
                help_text="search: search and feedback; read: documents, chunks, logs, analytics; write: upload, "
                "reprocess, delete.",
                size=None,
            ),
        ),
        migrations.RunPython(scopes_from_scope, scope_from_scopes),
        migrations.RemoveField(model_name="apikey", name="scope"),
        migrations.RunSQL(FUNCTION, BACKWARD),
    ]
