#!/bin/sh
# Runs once, when the postgres container initialises an empty data directory (after 10-roles.sql,
# the output of `manage.py database_roles --database chatbot`): gives the three roles the
# passwords of their URLs in .env, and installs pg_stat_statements (the monitoring page's slowest
# statements). Passwords must be URL-safe (letters, digits, - _ .): e.g. `openssl rand -hex 24`.
set -eu

password_of() {  # postgresql://user:password@host:port/db -> password
  rest=${1#*://}
  userinfo=${rest%%@*}
  printf '%s' "${userinfo#*:}"
}

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v app_password="$(password_of "$DATABASE_URL")" \
  -v owner_password="$(password_of "$DATABASE_OWNER_URL")" \
  -v maintenance_password="$(password_of "$DATABASE_MAINTENANCE_URL")" <<'SQL'
ALTER ROLE chatbot_app PASSWORD :'app_password';
ALTER ROLE chatbot_owner PASSWORD :'owner_password';
ALTER ROLE chatbot_maintenance PASSWORD :'maintenance_password';
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
SQL
