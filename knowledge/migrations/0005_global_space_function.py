"""Built-in embedding spaces (no tenant) are shared by every tenant and writable by none of them
(``tenants/rls.py``): the first chatbot that needs one has it created by this SECURITY DEFINER
function of the owner, with the space's partial HNSW index, and gets its id back."""

from django.db import migrations

FUNCTIONS = """
CREATE OR REPLACE FUNCTION app_global_space_ensure(
    p_provider text, p_model_name text, p_version text, p_dimensions integer
) RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    found bigint;
BEGIN
    SELECT id INTO found FROM knowledge_embeddingspace
    WHERE tenant_id IS NULL AND provider = p_provider AND model_name = p_model_name AND version = p_version;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    IF p_dimensions < 1 OR p_dimensions > 16000 THEN
        RAISE EXCEPTION 'dimensions out of range: %', p_dimensions;
    END IF;
    INSERT INTO knowledge_embeddingspace (tenant_id, provider, model_name, version, dimensions, created_at)
    VALUES (NULL, p_provider, p_model_name, p_version, p_dimensions, now())
    ON CONFLICT (provider, model_name, version) WHERE tenant_id IS NULL DO NOTHING;
    SELECT id INTO found FROM knowledge_embeddingspace
    WHERE tenant_id IS NULL AND provider = p_provider AND model_name = p_model_name AND version = p_version;
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE relname = 'chunkemb_hnsw_space_' || found) THEN
        SET CONSTRAINTS ALL IMMEDIATE;  -- deferred FK checks pending in this transaction block DDL
        PERFORM app_space_index_ensure(found, p_dimensions);
    END IF;
    RETURN found;
END $$;
"""

DROP = "DROP FUNCTION IF EXISTS app_global_space_ensure(text, text, text, integer);"


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0004_vector_index_functions")]

    operations = [migrations.RunSQL(FUNCTIONS, DROP)]
