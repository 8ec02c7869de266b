"""PostgreSQL tells every listening process when who-may-search-what changes.

A statement-level trigger sends ``NOTIFY access_changed`` (delivered at commit) whenever a key's
validity or scope, a tenant's activity, or a chatbot's tenant or content version changes, or one
of them is deleted — whoever makes the change (services, the admin, a shell, plain SQL). The
search fast path keeps key/chatbot context in memory only while it hears these notifications
(``search/fastpath.py``). Knowledge adds the same trigger to its space tables.
"""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION access_changed_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('access_changed', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER apikey_access_changed
    AFTER UPDATE OF revoked_at, expires_at, chatbot_id, tenant_id, key_hash OR DELETE ON tenants_apikey
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed_notify();
CREATE TRIGGER tenant_access_changed
    AFTER UPDATE OF is_active OR DELETE ON tenants_tenant
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed_notify();
CREATE TRIGGER chatbot_access_changed
    AFTER UPDATE OF content_version, tenant_id OR DELETE ON tenants_chatbot
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed_notify();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS apikey_access_changed ON tenants_apikey;
DROP TRIGGER IF EXISTS tenant_access_changed ON tenants_tenant;
DROP TRIGGER IF EXISTS chatbot_access_changed ON tenants_chatbot;
DROP FUNCTION IF EXISTS access_changed_notify();
"""


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
