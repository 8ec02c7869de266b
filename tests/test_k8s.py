"""The Kubernetes manifests (deploy/k8s): the base, the production overlay and the KEDA component
render with `kubectl kustomize` (offline: no remote bases), every rendered document is valid
against the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail), and the
shapes the README promises hold (probes, non-root read-only containers, one beat, HPAs and the
PDB on the right pods, no real secret, every referenced setting defined, the process commands the
same as `chatbot_training.processes`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from chatbot_training import processes

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
PRODUCTION = K8S / "overlays" / "production"
KEDA = K8S / "components" / "keda"
SECRET_NAME = "chatbot-training-secrets"
# Custom resources: their schemas come with the operator (KEDA), not with Kubernetes, so
# kubernetes-validate (core schemas only) cannot check them; the KEDA test checks their shape.
CRD_GROUPS = ("keda.sh/",)
# Environment variables the containers set that are not the app's own settings.
PROCESS_ENV = {"POD_IP", "HOME", "XDG_CACHE_HOME", "HF_HOME", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}


def kustomize(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the manifests cannot be rendered (apt/snap install kubectl)")
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return kustomize(BASE)


@pytest.fixture(scope="module")
def production() -> list[dict]:
    return kustomize(PRODUCTION)


@pytest.fixture(scope="module")
def production_keda(tmp_path_factory) -> list[dict]:
    """The production overlay with the KEDA component, as the README tells operators to add it."""
    overlay = tmp_path_factory.mktemp("keda-overlay")
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(PRODUCTION, overlay)],  # kustomize wants relative paths
                "components": [os.path.relpath(KEDA, overlay)],
            }
        )
    )
    return kustomize(overlay)


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def workloads(docs: list[dict]) -> dict[str, dict]:
    """Deployments and Jobs by name."""
    return {**of_kind(docs, "Deployment"), **of_kind(docs, "Job")}


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def config_data(docs: list[dict]) -> dict:
    (config,) = of_kind(docs, "ConfigMap").values()
    return config["data"]


def secret_template() -> dict:
    return yaml.safe_load((BASE / "secret.example.yaml").read_text())


def by_component(docs: list[dict], component: str) -> dict:
    (workload,) = [w for w in workloads(docs).values() if pod_labels(w)["app.kubernetes.io/component"] == component]
    return workload


# --- rendering and schemas ------------------------------------------------------------------


def test_kustomizations_are_local():
    """No remote bases or components: `kubectl kustomize` renders offline."""
    for path in K8S.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        for entry in kustomization.get("resources", []) + kustomization.get("components", []):
            assert "://" not in entry and not entry.startswith("github.com"), f"{path}: {entry}"
            assert (path.parent / entry).exists(), f"{path}: {entry} does not exist"


@pytest.mark.parametrize("which", ["base", "production", "production_keda"])
def test_every_rendered_document_is_valid(which, request):
    import kubernetes_validate

    docs = request.getfixturevalue(which)
    version = kubernetes_validate.latest_version()
    checked, skipped = [], []
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            skipped.append(doc["kind"])  # a CRD: no core schema (see CRD_GROUPS)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes {version}: {error}")
        checked.append(doc["kind"])
    assert len(checked) >= 15, checked
    assert {"Deployment", "Job", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= set(checked)
    if which == "production_keda":
        assert sorted(skipped) == ["ScaledObject", "ScaledObject", "TriggerAuthentication"]
    else:
        assert skipped == []


def test_a_schema_violation_is_caught():
    """The validator is strict: an unknown field or a wrong type fails (so the test above means something)."""
    import kubernetes_validate

    pdb = yaml.safe_load((BASE / "pdb.yaml").read_text())
    kubernetes_validate.validate(pdb, kubernetes_validate.latest_version(), strict=True)
    pdb["spec"]["minAvailabel"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pdb, kubernetes_validate.latest_version(), strict=True)


# --- workloads ------------------------------------------------------------------------------


def test_web_replicas_and_probes(base, production):
    web = by_component(base, "web")
    assert web["spec"]["replicas"] == 3
    assert by_component(production, "web")["spec"]["replicas"] > 3
    (container,) = pod_spec(web)["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # the model loads first
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["CHATBOT_PROCESS"] == "web" and env["EMBEDDING_TORCH_THREADS"] == "1"  # processes.web_env
    assert {port["containerPort"] for port in container["ports"]} == {8000}
    # probes and scrapes name the pod by its IP: Django must allow it besides the public hosts
    names = [item["name"] for item in container["env"]]
    assert names.index("POD_IP") < names.index("DJANGO_ALLOWED_HOSTS")
    assert container["env"][names.index("POD_IP")]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["DJANGO_ALLOWED_HOSTS"].split(",") == ["$(DJANGO_ALLOWED_HOSTS)", "$(POD_IP)"]
    assert container["envFrom"] and "DJANGO_ALLOWED_HOSTS" in config_data(base)


@pytest.mark.parametrize("which", ["base", "production"])
def test_every_container_is_locked_down_and_sized(which, request):
    docs = request.getfixturevalue(which)
    multiproc = config_data(docs)["PROMETHEUS_MULTIPROC_DIR"]
    assert len(workloads(docs)) == 5
    for name, workload in workloads(docs).items():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0, name
        assert spec["automountServiceAccountToken"] is False, name
        empty_dirs = {volume["name"] for volume in spec["volumes"] if "emptyDir" in volume}
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"], name
            assert context["seccompProfile"]["type"] == "RuntimeDefault", name
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][part]), (name, part)
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            # the only writable places: /tmp and the Prometheus multiprocess directory, on emptyDirs
            assert mounts["/tmp"] in empty_dirs and mounts[multiproc] in empty_dirs, name
            assert container["image"].startswith("ghcr.io/example/chatbot-training:"), name


def test_beat_is_single_and_recreated(base, production):
    for docs in (base, production):
        beat = by_component(docs, "beat")
        assert beat["kind"] == "Deployment" and beat["spec"]["replicas"] == 1
        assert beat["spec"]["strategy"] == {"type": "Recreate"}
        targets = {hpa["spec"]["scaleTargetRef"]["name"] for hpa in of_kind(docs, "HorizontalPodAutoscaler").values()}
        assert beat["metadata"]["name"] not in targets
        (container,) = pod_spec(beat)["containers"]
        assert container["command"][:6] == ["python", "-m", "celery", "-A", "chatbot_training", "beat"]


def test_worker_commands_are_the_projects(base):
    """Each worker consumes one queue, with the command line `chatbot_training.processes` builds."""
    queues = {"worker-ingestion": ("celery", "ingestion"), "worker-training": ("training", "training")}
    for component, (queue, name) in queues.items():
        (container,) = pod_spec(by_component(base, component))["containers"]
        expected = processes.worker_command(queue=queue, name=f"{name}@%h")
        assert container["command"] == ["python", *expected[1:]]
        assert container["command"][container["command"].index("-Q") + 1] == queue
    from django.conf import settings

    assert {queue for queue, _ in queues.values()} == {
        settings.CELERY_TASK_DEFAULT_QUEUE,
        settings.CELERY_TRAINING_QUEUE,
    }


def test_migrate_is_a_job_as_the_owner(base):
    job = of_kind(base, "Job")["chatbot-training-migrate"]
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert "manage.py migrate" in " ".join(container["command"])
    assert "manage.py setup_periodic_tasks" in " ".join(container["command"])
    env = {item["name"]: item.get("valueFrom", {}) for item in container["env"]}
    assert env["DATABASE_OWNER_URL"]["secretKeyRef"] == {"name": SECRET_NAME, "key": "DATABASE_OWNER_URL"}


# --- scaling, disruption, network -----------------------------------------------------------


@pytest.mark.parametrize("which", ["base", "production"])
def test_hpas_target_existing_deployments(which, request):
    docs = request.getfixturevalue(which)
    deployments = of_kind(docs, "Deployment")
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    targets = set()
    for name, hpa in hpas.items():
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deployments, name
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], name
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu", name
        targets.add(ref["name"])
    web = by_component(docs, "web")
    assert targets == {web["metadata"]["name"], "chatbot-training-worker-ingestion", "chatbot-training-worker-training"}
    assert hpas[web["metadata"]["name"]]["spec"]["minReplicas"] >= web["spec"]["replicas"] - 1
    if which == "production":
        assert hpas["chatbot-training-web"]["spec"]["maxReplicas"] > 10  # bumped over the base


def test_pdb_selects_the_web_pods_only(base):
    (pdb,) = of_kind(base, "PodDisruptionBudget").values()
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] == 2
    selected = [name for name, w in workloads(base).items() if selects(selector, pod_labels(w))]
    assert selected == ["chatbot-training-web"]
    assert pdb["spec"]["minAvailable"] < by_component(base, "web")["spec"]["replicas"]
    service = of_kind(base, "Service")["chatbot-training-web"]
    assert selects(service["spec"]["selector"], pod_labels(by_component(base, "web")))
    assert not selects(service["spec"]["selector"], pod_labels(by_component(base, "worker-ingestion")))


def test_network_policies(base):
    policies = of_kind(base, "NetworkPolicy").values()
    by_pod = {name: pod_labels(w) for name, w in workloads(base).items()}
    for name, labels in by_pod.items():
        applying = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], labels)]
        assert any("Ingress" in p["spec"]["policyTypes"] for p in applying), name  # ingress is restricted
        ingress = [rule for p in applying for rule in p["spec"].get("ingress", [])]
        if labels["app.kubernetes.io/component"] == "web":
            assert [port["port"] for rule in ingress for port in rule["ports"]] == [8000]
            assert all(rule["from"] for rule in ingress)  # from named namespaces, not from anywhere
        else:
            assert ingress == [], name  # workers, beat and the migrate Job accept nothing
        egress = [rule for p in applying for rule in p["spec"].get("egress", [])]
        egress_ports = {port["port"] for rule in egress for port in rule["ports"]}
        assert egress_ports == {5432, 6379, 53, 443}, name
        assert all("Egress" in p["spec"]["policyTypes"] for p in applying if p["spec"].get("egress")), name


def test_shared_storage_is_read_write_many(base):
    (claim,) = of_kind(base, "PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    config = config_data(base)
    for component in ("web", "worker-ingestion", "worker-training"):
        spec = pod_spec(by_component(base, component))
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "emptyDir" not in v}
        (container,) = spec["containers"]
        (mount,) = [m for m in container["volumeMounts"] if claims.get(m["name"]) == claim["metadata"]["name"]]
        for setting in ("MEDIA_ROOT", "TRAINING_ARTIFACTS_DIR"):
            assert config[setting].startswith(mount["mountPath"] + "/"), (component, setting)


# --- configuration and secrets --------------------------------------------------------------

PLACEHOLDER = "CHANGE-ME"


def looks_real(value: str) -> bool:
    """A secret-looking token: 16+ letters and digits mixing digits, lower and upper case (an API
    key), or 20+ characters with digits and letters between separators (a Django secret key)."""
    value = value.replace(PLACEHOLDER, "")
    mixed = any(
        re.search(r"[0-9]", token) and re.search(r"[a-z]", token) and re.search(r"[A-Z]", token)
        for token in re.findall(r"[A-Za-z0-9+/=]{16,}", value)
    )
    long = any(
        re.search(r"[0-9]", token) and re.search(r"[A-Za-z]", token) for token in re.findall(r"[^\s:/.,]{20,}", value)
    )
    return mixed or long


def test_no_real_secret_anywhere(base, production, production_keda):
    assert looks_real("sk-proj-9fQ2xLr7TbW1mZ8v") and looks_real("k3#j9x!w2(q8z-p0m@v5t^r1y&")  # it works
    assert not looks_real("postgresql://chatbot_app:CHANGE-ME@postgres.example.internal:5432/chatbot")
    template = secret_template()
    assert template["kind"] == "Secret" and template["metadata"]["name"] == SECRET_NAME
    for key, value in template["stringData"].items():
        assert PLACEHOLDER in value or value.endswith(".example.internal:6379"), key
        assert not looks_real(value), key
    for docs in (base, production, production_keda):
        assert of_kind(docs, "Secret") == {}  # created out of band, never rendered from git
        for config in of_kind(docs, "ConfigMap").values():
            for key, value in config["data"].items():
                assert not looks_real(value) and "KEY" not in key and "PASSWORD" not in key, key
    assert "secret.example.yaml" not in (BASE / "kustomization.yaml").read_text().split("resources:")[1]


@pytest.mark.parametrize("which", ["base", "production", "production_keda"])
def test_every_referenced_setting_exists(which, request):
    docs = request.getfixturevalue(which)
    secret_keys = set(secret_template()["stringData"])
    configs = of_kind(docs, "ConfigMap")
    readers = ("settings.py", "embedded.py", "wsgi.py", "processes.py")  # where the app reads its environment
    settings_source = "".join((ROOT / "chatbot_training" / name).read_text() for name in readers)
    for name, workload in workloads(docs).items():
        for container in pod_spec(workload)["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configs, name
            for item in container.get("env", []):
                ref = item.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] == SECRET_NAME and ref["secretKeyRef"]["key"] in secret_keys
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in configs[ref["configMapKeyRef"]["name"]]["data"]
                assert item["name"] in PROCESS_ENV or f'"{item["name"]}"' in settings_source, item["name"]
    for config in configs.values():
        for key in config["data"]:  # a misspelt setting would be silently ignored by the app
            assert key in PROCESS_ENV or f'"{key}"' in settings_source, key
    for doc in docs:  # the KEDA authentication reads the Secret's optional keys
        for target in doc.get("spec", {}).get("secretTargetRef", []):
            assert target["name"] == SECRET_NAME and target["key"] in secret_keys


# --- production and KEDA --------------------------------------------------------------------


def test_production_overlay(production):
    namespaces = of_kind(production, "Namespace")
    assert list(namespaces) == ["chatbot-training"]
    for doc in production:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "chatbot-training", doc["kind"]
    for workload in workloads(production).values():
        for container in pod_spec(workload)["containers"]:
            assert not container["image"].endswith(":latest")
    (ingress,) = of_kind(production, "Ingress").values()
    host = ingress["spec"]["rules"][0]["host"]
    assert ingress["spec"]["tls"] == [{"hosts": [host], "secretName": "chatbot-training-tls"}]
    assert host in config_data(production)["DJANGO_ALLOWED_HOSTS"].split(",")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] in of_kind(production, "Service")
    web = by_component(production, "web")
    assert pod_spec(web)["containers"][0]["resources"]["requests"]["memory"] == "2Gi"
    names = [item["name"] for item in pod_spec(web)["containers"][0]["env"]]
    assert names.index("POD_IP") < names.index("DJANGO_ALLOWED_HOSTS")  # the patch kept the order


def test_a_probe_by_pod_ip_needs_the_ip_in_allowed_hosts():
    """Why the web pods add $(POD_IP) to DJANGO_ALLOWED_HOSTS: the kubelet's probe names the pod
    by its IP, and Django refuses hosts it does not know."""
    from django.test import Client, override_settings

    probe = {"HTTP_HOST": "10.1.2.3:8000"}
    with override_settings(ALLOWED_HOSTS=["bots.example.com"]):
        assert Client().get("/healthz", **probe).status_code == 400
    with override_settings(ALLOWED_HOSTS=["bots.example.com", "10.1.2.3"]):
        assert Client().get("/healthz", **probe).status_code == 200


def test_keda_replaces_the_worker_hpas(production_keda):
    scaled = of_kind(production_keda, "ScaledObject")
    deployments = of_kind(production_keda, "Deployment")
    assert set(scaled) == {"chatbot-training-worker-ingestion", "chatbot-training-worker-training"}
    lists = {}
    for obj in scaled.values():
        assert obj["spec"]["scaleTargetRef"]["name"] in deployments
        assert obj["spec"]["minReplicaCount"] >= 1
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["authenticationRef"]["name"] in of_kind(production_keda, "TriggerAuthentication")
        lists[obj["spec"]["scaleTargetRef"]["name"]] = trigger["metadata"]["listName"]
    # each ScaledObject watches the queue its Deployment consumes
    for deployment, queue in lists.items():
        command = pod_spec(deployments[deployment])["containers"][0]["command"]
        assert command[command.index("-Q") + 1] == queue
    hpas = of_kind(production_keda, "HorizontalPodAutoscaler").values()
    hpa_targets = {hpa["spec"]["scaleTargetRef"]["name"] for hpa in hpas}
    assert hpa_targets == {"chatbot-training-web"}  # two autoscalers never drive one Deployment


def test_migrate_step_applies_what_the_job_needs(production):
    """README step 2 applies `-l 'app.kubernetes.io/component in (config,migrate)'` alone before the
    rollout: that selection holds the Job and every ConfigMap its pod reads."""
    chosen = [
        d
        for d in production
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") in ("config", "migrate")
    ]
    assert sorted(d["kind"] for d in chosen) == ["ConfigMap", "Job"]
    (job,) = [d for d in chosen if d["kind"] == "Job"]
    (container,) = pod_spec(job)["containers"]
    read = {source["configMapRef"]["name"] for source in container["envFrom"]}
    assert read == {d["metadata"]["name"] for d in chosen if d["kind"] == "ConfigMap"}


def test_commands_match_the_image_entry_point(base):
    """The manifests name their commands in full; the image's entry point (`chatbot_training.container`,
    `docker run IMAGE worker|worker-training|beat`) builds the same command lines."""
    container_module = pytest.importorskip("chatbot_training.container")
    env = {"CELERY_QUEUE": "celery", "CELERY_TRAINING_QUEUE": "training"}
    for component, argument in (
        ("worker-ingestion", "worker"),
        ("worker-training", "worker-training"),
        ("beat", "beat"),
    ):
        (container,) = pod_spec(by_component(base, component))["containers"]
        command, _ = container_module.command_for([argument], env)
        assert container["command"] == ["python", *command[1:]], component
