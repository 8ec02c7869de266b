"""Vector index DDL the app role may ask for but not run itself (it owns no table): SECURITY
DEFINER functions owned by the owner role that build exactly one kind of index from integer
arguments, inside the caller's transaction. Concurrent builds outside a transaction (the
optimiser's) connect as the owner instead (``knowledge/vectors.py``). Must match
``vectors.space_vector_expr`` and the index names there."""

from django.db import migrations

FUNCTIONS = """
CREATE OR REPLACE FUNCTION app_space_index_ensure(p_space_id bigint, p_dimensions integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    EXECUTE format(
        'CREATE INDEX IF NOT EXISTS %I ON knowledge_chunkembedding USING hnsw ((embedding::vector(%s)) '
        'vector_cosine_ops) WITH (m = 16, ef_construction = 64) WHERE space_id = %s',
        'chunkemb_hnsw_space_' || p_space_id, p_dimensions, p_space_id);
END $$;

CREATE OR REPLACE FUNCTION app_chatbot_index_create(p_space_id bigint, p_dimensions integer, p_chatbot_id bigint)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    SET CONSTRAINTS ALL IMMEDIATE;  -- deferred FK checks pending in this transaction block DDL
    EXECUTE format(
        'CREATE INDEX IF NOT EXISTS %I ON knowledge_chunkembedding USING hnsw ((embedding::vector(%s)) '
        'vector_cosine_ops) WITH (m = 16, ef_construction = 64) WHERE space_id = %s AND chatbot_id = %s',
        'chunkemb_hnsw_s' || p_space_id || '_c' || p_chatbot_id, p_dimensions, p_space_id, p_chatbot_id);
END $$;

CREATE OR REPLACE FUNCTION app_chatbot_index_drop(p_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF p_name !~ '^chunkemb_hnsw_s[0-9]+_c[0-9]+$' THEN
        RAISE EXCEPTION 'not a chatbot vector index: %', p_name;
    END IF;
    SET CONSTRAINTS ALL IMMEDIATE;
    EXECUTE format('DROP INDEX IF EXISTS %I', p_name);
END $$;
"""

DROP = """
DROP FUNCTION IF EXISTS app_space_index_ensure(bigint, integer);
DROP FUNCTION IF EXISTS app_chatbot_index_create(bigint, integer, bigint);
DROP FUNCTION IF EXISTS app_chatbot_index_drop(text);
"""


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0003_space_access_changed_notify")]

    operations = [migrations.RunSQL(FUNCTIONS, DROP)]
