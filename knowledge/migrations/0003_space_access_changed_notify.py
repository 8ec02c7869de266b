"""``NOTIFY access_changed`` when a chatbot's spaces or a space's model change (see
tenants/migrations/0002_access_changed_notify.py)."""

from django.db import migrations

FORWARD = """
CREATE TRIGGER chatbotspace_access_changed
    AFTER INSERT OR UPDATE OR DELETE ON knowledge_chatbotspace
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed_notify();
CREATE TRIGGER embeddingspace_access_changed
    AFTER UPDATE OR DELETE ON knowledge_embeddingspace
    FOR EACH STATEMENT EXECUTE FUNCTION access_changed_notify();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS chatbotspace_access_changed ON knowledge_chatbotspace;
DROP TRIGGER IF EXISTS embeddingspace_access_changed ON knowledge_embeddingspace;
"""


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0002_chunk_chunk_text_trgm"), ("tenants", "0002_access_changed_notify")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
