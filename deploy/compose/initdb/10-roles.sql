-- as a superuser, connected to any database:
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chatbot_owner') THEN CREATE ROLE chatbot_owner LOGIN NOSUPERUSER BYPASSRLS CREATEDB NOCREATEROLE; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chatbot_app') THEN CREATE ROLE chatbot_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT; END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chatbot_maintenance') THEN CREATE ROLE chatbot_maintenance LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT; END IF; END $$;
DO $$ DECLARE r record; BEGIN FOR r IN SELECT m.rolname FROM pg_auth_members a JOIN pg_roles m ON m.oid = a.member WHERE a.roleid = 'chatbot_maintenance'::regrole LOOP EXECUTE format('REVOKE chatbot_maintenance FROM %I', r.rolname); END LOOP; END $$;
ALTER DATABASE "chatbot" OWNER TO chatbot_owner;
GRANT CONNECT, TEMPORARY ON DATABASE "chatbot" TO chatbot_app;
GRANT CONNECT ON DATABASE "chatbot" TO chatbot_maintenance;
GRANT pg_monitor TO chatbot_maintenance WITH INHERIT TRUE;
\connect "chatbot"
CREATE EXTENSION IF NOT EXISTS vector;
CREATE EXTENSION IF NOT EXISTS pg_trgm;
ALTER FUNCTION ts_match_vq(tsvector, tsquery) LEAKPROOF;
ALTER FUNCTION word_similarity_op(text, text) LEAKPROOF;
ALTER FUNCTION word_similarity_commutator_op(text, text) LEAKPROOF;
ALTER FUNCTION similarity_op(text, text) LEAKPROOF;
DO $$ DECLARE r record; BEGIN
        FOR r IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')
                   AND c.relowner <> 'chatbot_owner'::regrole
                   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e') LOOP
            EXECUTE format('ALTER TABLE public.%I OWNER TO chatbot_owner', r.relname);
        END LOOP;
        FOR r IN SELECT p.oid::regprocedure AS signature FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname = 'public' AND p.proowner <> 'chatbot_owner'::regrole
                   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') LOOP
            EXECUTE format('ALTER FUNCTION %s OWNER TO chatbot_owner', r.signature);
        END LOOP;
        END $$;
-- set passwords with ALTER ROLE ... PASSWORD, then DATABASE_URL=postgres://chatbot_app:...@host/chatbot, DATABASE_OWNER_URL=postgres://chatbot_owner:...@host/chatbot and DATABASE_MAINTENANCE_URL=postgres://chatbot_maintenance:...@host/chatbot
