"""deploy/kubernetes/ (offline, no cluster): the manifests parse, the RayService runs what
deploy/serve-config.yaml says, the Dockerfiles copy files that exist, every setting they name
exists, secrets are mounted where the settings look and never committed, and NATS is a
three-server JetStream cluster with file storage."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from services.events.permissions import ROLES
from services.events.server_config import role_variable
from services.kubernetes import (
    MODEL_DIR,
    NATS_SERVERS,
    NATS_VALUES,
    RAYSERVICE,
    SERVE_CONFIG,
    kubernetes_serve_config,
    nats_urls,
    stale_files,
    write_files,
)
from services.settings import Settings, unknown_variables

REPO = Path(__file__).resolve().parents[1]
KUBE = REPO / "deploy/kubernetes"
SECRETS_ROOT = "/opt/listenpost-secrets"


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((KUBE / name).read_text()) if d is not None]


def rayservice() -> dict[str, Any]:
    (doc,) = load("rayservice.yaml")
    return doc


def serve_config_v2() -> dict[str, Any]:
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def pod_specs(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each Ray group's pod spec, by group name (the head is "head")."""
    cluster = service["spec"]["rayClusterConfig"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        specs[group["groupName"]] = group["template"]["spec"]
    return specs


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


def strings(value: Any) -> list[str]:
    return [v for v in walk(value) if isinstance(v, str)]


# --- every manifest parses --------------------------------------------------------------------


def test_every_manifest_parses_and_names_its_kind() -> None:
    manifests = sorted(KUBE.glob("*.yaml"))
    assert {p.name for p in manifests} >= {"rayservice.yaml", "nats-values.yaml", "kustomization.yaml", "secrets.example.yaml"}
    for path in manifests:
        docs = load(path.name)
        assert docs, path
        if path.name == "nats-values.yaml":  # Helm values, not a Kubernetes object
            continue
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), f"{path.name}: an object without apiVersion/kind"
    kustomization = load("kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (KUBE / resource).is_file(), resource
    # Placeholders must never be applied over real Secrets by `kubectl apply -k`.
    assert "secrets.example.yaml" not in kustomization["resources"]
    images = {i["name"] for i in kustomization["images"]}
    used = {c["image"] for spec in pod_specs(rayservice()).values() for c in spec["containers"]}
    used |= {c["image"] for c in load("provision-job.yaml")[0]["spec"]["template"]["spec"]["containers"]}
    assert used <= images, f"images kustomization.yaml does not set: {used - images}"


# --- serveConfigV2 is deploy/serve-config.yaml ----------------------------------------------------


def test_the_generated_blocks_are_current() -> None:
    assert stale_files(REPO, Settings(_env_file=None)) == [], "run: listenpost deploy kubernetes"


def test_serve_config_v2_is_the_serve_config_with_only_the_kubernetes_changes() -> None:
    shipped = yaml.safe_load((REPO / SERVE_CONFIG).read_text())
    v2 = serve_config_v2()
    assert v2 == kubernetes_serve_config(shipped)
    ServeDeploySchema.model_validate(v2)
    # What differs, and nothing else: a change to the Serve config reaches Kubernetes.
    assert sorted(_differences(shipped, v2)) == [
        "applications.0.args.captioner.model",
        "applications.0.args.captioner.num_cpus",
        "applications.0.runtime_env.env_vars.HF_HUB_OFFLINE",
        "applications.0.runtime_env.env_vars.LISTENPOST_CAPTIONER__MODEL",
        "applications.0.runtime_env.env_vars.LISTENPOST_NATS__REPLICAS",
        "applications.0.runtime_env.env_vars.LISTENPOST_NATS__URL",
    ]


def _differences(a: Any, b: Any, path: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _differences(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _differences(x, y, f"{path}.{i}" if path else str(i))
    elif a != b:
        yield path


def test_the_settings_a_replica_gets_on_kubernetes(monkeypatch: pytest.MonkeyPatch) -> None:
    (app,) = ServeDeploySchema.model_validate(serve_config_v2()).applications
    for name, value in app.runtime_env["env_vars"].items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None, **app.args)
    nats = settings.nats
    assert len(nats.servers) == NATS_SERVERS and all(u.startswith("tls://") for u in nats.servers)
    assert nats.replicas == NATS_SERVERS and nats.tls and not nats.provision_on_start
    assert settings.captioner.model == MODEL_DIR and settings.captioner.num_gpus >= 1
    # Placement: the GPU group advertises no Ray CPU, so only a deployment that reserves none
    # (the Captioner) can land there; every CPU deployment reserves some.
    assert settings.captioner.num_cpus == 0
    assert min(settings.ingress.num_cpus, settings.preprocess.num_cpus, settings.rules.num_cpus, settings.notify.num_cpus) > 0


def test_a_change_to_the_serve_config_makes_the_rayservice_stale_until_regenerated(tmp_path: Path) -> None:
    for relative in (SERVE_CONFIG, RAYSERVICE, NATS_VALUES):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / relative, tmp_path / relative)
    settings = Settings(_env_file=None)
    assert stale_files(tmp_path, settings) == []
    config = (tmp_path / SERVE_CONFIG).read_text()
    (tmp_path / SERVE_CONFIG).write_text(config.replace("max_replicas: 4", "max_replicas: 6"))
    assert stale_files(tmp_path, settings) == [tmp_path / RAYSERVICE]
    assert write_files(tmp_path, settings) == [tmp_path / RAYSERVICE]
    (doc,) = yaml.safe_load_all((tmp_path / RAYSERVICE).read_text())
    assert yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]["args"]["captioner"]["max_replicas"] == 6
    # Only the block changed: the hand-written rest of the file (and its comments) is kept.
    kept = [line for line in (tmp_path / RAYSERVICE).read_text().splitlines() if "max_replicas" not in line]
    assert kept == [line for line in (REPO / RAYSERVICE).read_text().splitlines() if "max_replicas" not in line]


# --- the Ray cluster ---------------------------------------------------------------------------


def test_the_ray_cluster_runs_the_pinned_ray_with_token_auth_on_every_container() -> None:
    service = rayservice()
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    pin = re.search(r'"ray\[serve\]==([0-9.]+)"', (REPO / "pyproject.toml").read_text())
    assert pin and cluster["rayVersion"] == pin.group(1)
    auth = cluster["authOptions"]
    assert auth["mode"] == "token"
    specs = pod_specs(service)
    assert set(specs) == {"head", "cpu", "gpu"}
    for group, spec in specs.items():
        for container in spec["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["RAY_AUTH_MODE"]["value"] == "token", group
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (auth["secretName"], "auth_token"), group
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0


def test_the_gpu_group_holds_the_captioner_replicas_and_reads_the_model_from_its_volume() -> None:
    service = rayservice()
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    gpu = groups["gpu"]
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["rayStartParams"]["num-cpus"] == "0"
    assert all("nvidia.com/gpu" not in c.get("resources", {}).get("limits", {})
               for name in ("head", "cpu") for c in pod_specs(service)[name]["containers"])  # fmt: skip
    captioner = Settings(_env_file=None, **serve_config_v2()["applications"][0]["args"]).captioner
    gpus_per_pod = container["resources"]["limits"]["nvidia.com/gpu"]
    assert gpu["maxReplicas"] * gpus_per_pod >= captioner.max_replicas * captioner.num_gpus
    assert gpu["minReplicas"] * gpus_per_pod >= captioner.min_replicas * captioner.num_gpus
    mounts = container["volumeMounts"]
    model_mount = [m for m in mounts if MODEL_DIR.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(model_mount) == 1 and model_mount[0]["readOnly"] is True
    volumes = {v["name"]: v for v in gpu["template"]["spec"]["volumes"]}
    claim = volumes[model_mount[0]["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == load("models-pvc.yaml")[0]["metadata"]["name"]
    # The Captioner touches no NATS secret: none is mounted where it runs.
    assert not any(m["mountPath"].startswith(SECRETS_ROOT) for m in mounts)


def test_every_secret_path_the_serve_config_names_is_mounted_on_the_cpu_pods() -> None:
    needed = sorted({s for s in strings(serve_config_v2()) if s.startswith(SECRETS_ROOT + "/")})
    assert len(needed) >= 6  # the CA, four role seeds, the receivers' folder
    for group in ("head", "cpu"):
        spec = pod_specs(rayservice())[group]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            mounts = container["volumeMounts"]
            for path in needed:
                covering = [m for m in mounts if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
                assert covering, f"{group}: nothing mounted at {path}"
                for mount in covering:
                    assert mount.get("readOnly") is True and "secret" in volumes[mount["name"]], (group, path)


# --- secrets -----------------------------------------------------------------------------------


def _secret_references() -> set[tuple[str, str | None]]:
    """(Secret, key) pairs the manifests and Helm values read; key None for a whole Secret."""
    refs: set[tuple[str, str | None]] = set()
    docs = [rayservice(), *load("provision-job.yaml"), *load("nats-values.yaml")]
    for doc in docs:
        for node in walk(doc):
            if not isinstance(node, dict):
                continue
            if isinstance(node.get("secretKeyRef"), dict):
                refs.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
            if isinstance(node.get("secretName"), str):
                refs.add((node["secretName"], None))
    for spec in [*pod_specs(rayservice()).values(), load("provision-job.yaml")[0]["spec"]["template"]["spec"]]:
        secrets = {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] in secrets and "subPath" in mount:
                    refs.add((secrets[mount["name"]], mount["subPath"]))
    values = load("nats-values.yaml")[0]
    for tls in (values["config"]["nats"]["tls"], values["config"]["cluster"]["tls"]):
        refs |= {(tls["secretName"], "tls.crt"), (tls["secretName"], "tls.key")}
    refs.add((values["tlsCA"]["secretName"], values["tlsCA"]["key"]))
    return refs


def test_every_secret_read_is_in_the_template_and_the_template_holds_no_secret() -> None:
    templates = {d["metadata"]["name"]: d["stringData"] for d in load("secrets.example.yaml")}
    refs = _secret_references()
    assert len(refs) > 10
    for name, key in sorted(refs, key=str):
        assert name in templates, f"Secret {name} is read but not in secrets.example.yaml"
        assert key is None or key in templates[name], f"Secret {name} has no key {key} in secrets.example.yaml"
    for name, data in templates.items():
        for key, value in data.items():
            assert value.startswith("<") and value.endswith(">"), f"{name}.{key}: not a <placeholder>"
    # No seed or key anywhere under deploy/: NKey seeds begin with S, private keys with a PEM header.
    for path in sorted((REPO / "deploy").rglob("*")):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"\bS[UAO][A-Z2-7]{50,}\b", text), f"{path}: an NKey seed"
            assert "PRIVATE KEY-----" not in text, f"{path}: a private key"


# --- settings named anywhere under deploy/ ----------------------------------------------------------


# A variable, not a stream named in a subject ($JS.API.STREAM.INFO.LISTENPOST_IN, KV_LISTENPOST_...).
LISTENPOST_NAME = re.compile(r"(?<![.\w])LISTENPOST_[A-Z0-9_]*[A-Z0-9]\b")


def test_every_listenpost_variable_under_deploy_is_a_setting_or_a_nats_server_variable() -> None:
    server_variables = {role_variable(role).name for role in ROLES}  # deploy/nats-server.conf reads these
    named: dict[str, set[str]] = {}
    for path in sorted((REPO / "deploy").rglob("*")):
        if path.is_file():
            for name in LISTENPOST_NAME.findall(path.read_text()):
                named.setdefault(name, set()).add(str(path.relative_to(REPO)))
    assert "LISTENPOST_NATS__REPLICAS" in named and "LISTENPOST_CAPTIONER__MODEL" in named
    assert server_variables <= set(named)
    settings_named = {n: where for n, where in named.items() if n not in server_variables}
    problems = unknown_variables(dict.fromkeys(settings_named, "x"))
    assert problems == [], {p: named[p.split(":")[0]] for p in problems}
    # The check catches a typo (nats.replicas, not replica).
    assert unknown_variables({"LISTENPOST_NATS__REPLICA": "3"}) != []
    # Every key under `args` is a setting (settings are strict: an unknown key raises).
    Settings(_env_file=None, **yaml.safe_load((REPO / SERVE_CONFIG).read_text())["applications"][0]["args"])
    Settings(_env_file=None, **serve_config_v2()["applications"][0]["args"])


def test_the_provisioning_job_provisions_the_servers_the_replicas_use_with_their_replica_count() -> None:
    (job,) = load("provision-job.yaml")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    deployed = serve_config_v2()["applications"][0]["runtime_env"]["env_vars"]
    assert env["LISTENPOST_NATS__URL"] == deployed["LISTENPOST_NATS__URL"] == nats_urls()
    assert env["LISTENPOST_NATS__REPLICAS"] == deployed["LISTENPOST_NATS__REPLICAS"] == str(NATS_SERVERS)
    assert container["command"] == ["listenpost", "nats", "provision"]
    assert env["LISTENPOST_NATS__ROLES__ADMIN__NKEY_SEED_FILE"].startswith(SECRETS_ROOT)
    # Only this Job holds the admin seed: never a Ray pod.
    assert not any("admin" in s for s in strings(rayservice()))


# --- NATS ----------------------------------------------------------------------------------------


def test_the_nats_values_make_a_three_server_jetstream_cluster_on_files_hardened_as_deploy_conf() -> None:
    (values,) = load("nats-values.yaml")
    config = values["config"]
    assert config["cluster"]["enabled"] is True and config["cluster"]["replicas"] == NATS_SERVERS == 3
    jetstream = config["jetstream"]
    assert jetstream["enabled"] is True and jetstream["memoryStore"]["enabled"] is False
    file_store = jetstream["fileStore"]
    assert file_store["enabled"] is True and file_store["pvc"]["enabled"] is True
    assert re.fullmatch(r"[0-9]+[GT]i", file_store["pvc"]["size"])
    assert jetstream["merge"] == {"cipher": "chachapoly", "key": "<< $NATS_JETSTREAM_KEY >>"}  # encrypted at rest
    assert config["nats"]["tls"]["enabled"] is True and config["cluster"]["tls"]["enabled"] is True
    assert config["cluster"]["tls"]["merge"]["verify"] is True  # routes only from our CA
    users = config["merge"]["authorization"]["users"]
    assert [u["nkey"] for u in users] == [f"<< ${role_variable(role).name} >>" for role in ROLES]
    # Every $VARIABLE the config reads comes from the server's environment.
    wanted = set(re.findall(r"<< \$([A-Z0-9_]+) >>", yaml.safe_dump(config)))
    assert wanted == {"NATS_JETSTREAM_KEY", *(role_variable(role).name for role in ROLES)}
    assert wanted <= set(values["container"]["env"])
    # The URLs the replicas use name the StatefulSet's pods of this many servers.
    assert len(nats_urls().split(",")) == config["cluster"]["replicas"]


# --- images --------------------------------------------------------------------------------------


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_a_dockerfile_copies_only_files_that_exist_and_that_its_ignore_file_lets_through(flavour: str) -> None:
    dockerfile = KUBE / f"Dockerfile.{flavour}"
    allowed = {line[1:].strip() for line in (KUBE / f"Dockerfile.{flavour}.dockerignore").read_text().splitlines()
               if line.startswith("!")}  # fmt: skip
    copied = []
    for word, rest in _instructions(dockerfile):
        if word in ("COPY", "ADD"):
            parts = [p for p in rest.split() if not p.startswith("--")]
            copied += parts[:-1]
    assert {"services", "pyproject.toml", "router_rules"} <= set(copied)
    for source in copied:
        assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repository"
        assert source.split("/")[0] in allowed, f"{dockerfile.name} copies {source}, which its .dockerignore leaves out"
    users = [rest for word, rest in _instructions(dockerfile) if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"


def test_both_images_run_the_same_ray_and_python_and_the_gpu_one_the_pinned_vllm() -> None:
    bases = {f: next(rest for w, rest in _instructions(KUBE / f"Dockerfile.{f}") if w == "FROM") for f in ("cpu", "gpu")}
    ray_version = rayservice()["spec"]["rayClusterConfig"]["rayVersion"]
    assert bases["cpu"] == f"rayproject/ray:{ray_version}-py311"
    assert bases["gpu"] == f"rayproject/ray:{ray_version}-py311-gpu"
    setup = (REPO / "scripts/setup.sh").read_text()
    vllm = re.search(r"VLLM_CUDA_VERSION=([0-9.]+)", setup)
    assert vllm and f'"vllm=={vllm.group(1)}"' in (KUBE / "Dockerfile.gpu").read_text()
    assert "vllm" not in (KUBE / "Dockerfile.cpu").read_text().split("FROM", 1)[1].lower().replace("no vllm", "")
    gpu_env = " ".join(rest for w, rest in _instructions(KUBE / "Dockerfile.gpu") if w == "ENV")
    assert f"LISTENPOST_CAPTIONER__MODEL={MODEL_DIR}" in gpu_env
