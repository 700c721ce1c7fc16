"""Static checks of deploy/: the files parse, agree with each other and with the locked project.

No cluster or Docker daemon is needed: the manifests are parsed with PyYAML, the Prefect files are
validated with Prefect's own models and templating, and the entrypoints and configs they name are
imported and loaded for real. The security checks (images pinned by digest, no default secrets,
restricted containers, Ray token auth, NetworkPolicies) parse the same files; Ray's token auth is
also started for real with the environment the manifests set.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGE_DIR = "/app"  # WORKDIR of the image: where the repository's files are inside it
IMAGE_REPO = "ghcr.io/vaeaug/vaeaug"  # the project image; its tag is the project version
S3_SECRET = "vaeaug-s3"
FLOW_NAME = "vae-augmentation"

RAYCLUSTER = DEPLOY / "kuberay" / "raycluster.yaml"
RAYJOB = DEPLOY / "kuberay" / "rayjob.yaml"
PREFECT_YAML = DEPLOY / "prefect.yaml"
K8S_TEMPLATE = DEPLOY / "prefect" / "k8s-gpu-base-job-template.json"
COMPOSE = DEPLOY / "docker-compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
ENV_EXAMPLE = DEPLOY / ".env.example"

COMPOSE_SERVICES = {"postgres", "prefect-server", "prefect-worker", "minio", "ray-head", "ray-worker"}
RAY_AUTH_SECRET = "vaeaug-ray-auth"  # key auth_token (KubeRay's convention for authOptions.secretName)
RAY_PORTS = {6379, 8265, 10001}  # GCS, dashboard and jobs API, Ray client
IMAGE_HOME = "/home/vaeaug"  # HOME of the image's user (useradd --create-home in the Dockerfile)
DIGEST_PLACEHOLDER = "REPLACE_WITH_DIGEST"
PINNED_IMAGE = re.compile(r"^\S+?:\w[\w.-]{0,127}@sha256:[0-9a-f]{64}$")
REQUIRED_VARIABLE = re.compile(r"^\$\{(?P<name>[A-Za-z_]\w*):\?(?P<message>[^}]+)\}$")
# Compose variables that hold credentials or identities: never a default, always `${VAR:?...}`.
COMPOSE_SECRET = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|AUTH|_USER$)")

SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.IGNORECASE)
SUBSTITUTION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?[-?](?P<default>[^}]*))?\}")
AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
AWS_SECRET_VALUE = re.compile(r"aws_secret_access_key\W{1,4}[A-Za-z0-9/+]{40}\b", re.IGNORECASE)
CRON_FIELD = r"[0-9A-Za-z*/,\-?LW#]+"
CRON_5_FIELDS = re.compile(rf"^{CRON_FIELD}(\s+{CRON_FIELD}){{4}}$")


# ------------------------------------------------------------------------------------ helpers
def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{_rel(path)}: expected a mapping at the top level"
    return data


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _locked_version(package: str) -> str:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    versions = {p["version"] for p in lock["package"] if p["name"] == package}
    assert len(versions) == 1, f"uv.lock: expected one locked version of {package}, found {versions}"
    return versions.pop()


PROJECT_VERSION = _pyproject()["project"]["version"]
IMAGE = f"{IMAGE_REPO}:{PROJECT_VERSION}"


def _images(node: Any) -> Iterator[str]:
    """Every string value of an `image` key, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from _images(value)
    elif isinstance(node, list):
        for item in node:
            yield from _images(item)


def _image_repo_and_tag(image: str) -> tuple[str, str]:
    repo, _, tag = image.rpartition(":")
    if "/" in tag or not repo:  # "host:port/name" without a tag
        return image, ""
    return repo, tag


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_template["spec"]["containers"]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kuberay(path: Path) -> dict[str, Any]:
    """The RayCluster or RayJob of a KubeRay file (its other documents are NetworkPolicies)."""
    (doc,) = [d for d in _docs(path) if d.get("apiVersion") == "ray.io/v1"]
    return doc


def _cluster_specs() -> dict[str, dict[str, Any]]:
    return {
        _rel(RAYCLUSTER): _kuberay(RAYCLUSTER)["spec"],
        _rel(RAYJOB): _kuberay(RAYJOB)["spec"]["rayClusterSpec"],
    }


def _gpus(container: dict[str, Any], kind: str = "limits") -> int:
    return int(container.get("resources", {}).get(kind, {}).get("nvidia.com/gpu", 0))


def _repo_path(path: str) -> Path:
    """A path as the image sees it (/app/...) or relative to the repository root -> the checkout."""
    if path.startswith(IMAGE_DIR + "/"):
        return REPO / path[len(IMAGE_DIR) + 1 :]
    assert not os.path.isabs(path), f"{path!r}: absolute paths must be inside {IMAGE_DIR}"
    return REPO / path


# ------------------------------------------------------------------------------------ all files
DEPLOY_YAML = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_deploy_directory_has_the_expected_files() -> None:
    expected = [
        DOCKERFILE,
        RAYCLUSTER,
        RAYJOB,
        COMPOSE,
        ENV_EXAMPLE,
        PREFECT_YAML,
        K8S_TEMPLATE,
        DEPLOY / "README.md",
        DEPLOY / "configs" / "cluster.yaml",
        DEPLOY / "configs" / "local.yaml",
    ]
    missing = [_rel(p) for p in expected if not p.is_file()]
    assert not missing, f"missing deploy files: {missing}"


@pytest.mark.parametrize("path", DEPLOY_YAML, ids=_rel)
def test_every_yaml_file_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs, f"{_rel(path)} is empty"
    assert all(isinstance(d, dict) for d in docs), f"{_rel(path)}: every document must be a mapping"


def test_no_cloud_keys_in_any_deploy_file() -> None:
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        assert not AWS_KEY_ID.search(text), f"{_rel(path)} contains what looks like an AWS access key id"
        assert not AWS_SECRET_VALUE.search(text), f"{_rel(path)} contains what looks like an AWS secret key"


def _env_example() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_one_project_image_everywhere() -> None:
    # Kubernetes and Prefect: the image by digest (the placeholder until `deploy/images.py pin`).
    found: dict[str, set[str]] = {}
    for path in (RAYCLUSTER, RAYJOB):
        found[_rel(path)] = {i for doc in _docs(path) for i in _images(doc)}
    for dep in _load(PREFECT_YAML)["deployments"]:
        image = dep.get("work_pool", {}).get("job_variables", {}).get("image")
        if image is not None:
            found[f"{_rel(PREFECT_YAML)}:{dep['name']}"] = {image}
    assert len(found) >= 3, f"too few image references found: {found}"
    refs = set().union(*found.values())
    assert len(refs) == 1, f"every manifest must use the same project image: {found}"
    (ref,) = refs
    name_tag, _, digest = ref.partition("@sha256:")
    assert name_tag == IMAGE, f"the project image is {IMAGE} (pyproject.toml's version), not {name_tag}"
    assert digest == DIGEST_PLACEHOLDER or re.fullmatch(r"[0-9a-f]{64}", digest), ref
    # Compose: every service built from the project image takes it from deploy/.env.
    for name, svc in _services().items():
        if "build" in svc:
            var = REQUIRED_VARIABLE.match(svc["image"])
            assert var and var.group("name") == "VAEAUG_IMAGE", (
                f"{name}: image must be ${{VAEAUG_IMAGE:?...}}"
            )
            assert f"{IMAGE}@sha256:" in var.group("message"), "the message shows what to set"
    assert "VAEAUG_IMAGE" in _env_example()
    assert f"-t {IMAGE}" in (DEPLOY / "README.md").read_text(), "README's build command must tag the image"
    assert f"-t {IMAGE}" in DOCKERFILE.read_text(), "the Dockerfile's build comment must tag the image"


# ------------------------------------------------------------------------------------ Dockerfile
def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical = _images_tool().dockerfile_lines(DOCKERFILE.read_text())  # the tool's own parse
    out = []
    for line in logical:
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def _dockerfile_args() -> dict[str, str]:
    return {
        name: default
        for instr, args in _dockerfile()
        if instr == "ARG" and "=" in args
        for name, _, default in [args.partition("=")]
    }


def _dockerfile_args_without_default() -> set[str]:
    return {args.split()[0] for instr, args in _dockerfile() if instr == "ARG" and "=" not in args}


def _expand_args(value: str) -> str:
    args = _dockerfile_args()
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    last_from = max(i for i, (instr, _) in enumerate(instructions) if instr == "FROM")
    return instructions[last_from:]


def _documented_build_arg(name: str) -> str:
    """The name:tag the Dockerfile's header says to pass as --build-arg `name` (it has no default)."""
    match = re.search(rf"--build-arg {name}=(\S+?)@sha256:", DOCKERFILE.read_text())
    assert match, f"the Dockerfile header must show --build-arg {name}=<name:tag>@sha256:<digest>"
    return match.group(1)


def test_dockerfile_base_image_is_cuda_capable() -> None:
    from_args = _final_stage()[0][1].split()
    assert from_args[0] == "${CUDA_IMAGE}", "the runtime stage builds on the CUDA_IMAGE build arg"
    assert "CUDA_IMAGE" in _dockerfile_args_without_default()
    base = _documented_build_arg("CUDA_IMAGE")
    repo, tag = _image_repo_and_tag(base)
    cuda = repo == "nvidia/cuda" and re.match(r"^\d+\.\d+", tag)
    ray_gpu = repo == "rayproject/ray" and ("gpu" in tag or "-cu" in tag)
    assert cuda or ray_gpu, f"runtime base image {base!r} is not an NVIDIA CUDA or Ray GPU image"
    assert tag and tag != "latest", f"pin the base image tag: {base!r}"


def test_dockerfile_installs_exactly_the_lockfile() -> None:
    instructions = _dockerfile()
    syncs = [i for i, (instr, args) in enumerate(instructions) if instr == "RUN" and "uv sync" in args]
    assert syncs, "the Dockerfile must install the dependencies with `uv sync`"
    for i in syncs:
        args = instructions[i][1]
        assert "--locked" in args, f"`uv sync` without --locked: {args}"
        assert "--no-dev" in args, f"`uv sync` without --no-dev: {args}"
    lock_copy = next(
        (i for i, (instr, args) in enumerate(instructions) if instr == "COPY" and "uv.lock" in args.split()),
        None,
    )
    assert lock_copy is not None, "the Dockerfile must COPY uv.lock"
    assert lock_copy < syncs[0], "copy pyproject.toml and uv.lock before installing (layer caching)"
    assert "pyproject.toml" in instructions[lock_copy][1]
    # The dependencies are installed before the code is copied, so code edits keep that layer.
    first_code_copy = next(
        i for i, (instr, args) in enumerate(instructions) if instr == "COPY" and args.startswith("pipelines")
    )
    assert "--no-install-project" in instructions[syncs[0]][1] and syncs[0] < first_code_copy


def test_dockerfile_python_matches_the_project() -> None:
    python = _dockerfile_args()["PYTHON_VERSION"]
    requires = _pyproject()["project"]["requires-python"]
    minimum = re.match(r">=\s*(\d+\.\d+)", requires)
    assert minimum and tuple(map(int, python.split("."))) >= tuple(map(int, minimum.group(1).split(".")))
    assert python == "3.11", "the project and its lockfile target Python 3.11"


def test_dockerfile_runs_as_a_non_root_numeric_user() -> None:
    final = _final_stage()
    users = [_expand_args(args) for instr, args in final if instr == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]} is root"
    assert user.isdigit(), f"USER {users[-1]}: use a numeric uid so Kubernetes can check runAsNonRoot"
    # The pods' securityContext asks for the same uid.
    for where, spec in _cluster_specs().items():
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            sc = group["template"]["spec"].get("securityContext", {})
            assert sc.get("runAsNonRoot") is True, f"{where}: set runAsNonRoot"
            assert str(sc.get("runAsUser")) == user, f"{where}: runAsUser must be the image's uid {user}"


def test_dockerfile_copies_the_code_into_the_workdir() -> None:
    final = _final_stage()
    workdirs = [args for instr, args in final if instr == "WORKDIR"]
    assert workdirs and workdirs[-1] == IMAGE_DIR
    copied = {
        args.split()[0].rstrip("/") for instr, args in final if instr == "COPY" and "--from" not in args
    }
    assert {"vae", "pipelines", "deploy"} <= copied, f"runtime stage copies {copied}"
    env = " ".join(args for instr, args in final if instr == "ENV")
    assert "/app/.venv/bin" in env, "the venv must be on PATH (KubeRay runs `ray start` from the PATH)"


def test_docker_build_context_excludes_local_secrets_and_venv() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    assert patterns[0] == "**", "allow-list the build context: start with ** and re-include what is copied"
    assert "deploy/.env" in patterns, "deploy/.env must never reach the image"
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


# ------------------------------------------------------------------------------------ KubeRay
@pytest.mark.parametrize(
    ("path", "kind"), [(RAYCLUSTER, "RayCluster"), (RAYJOB, "RayJob")], ids=["raycluster", "rayjob"]
)
def test_kuberay_resource_header(path: Path, kind: str) -> None:
    doc = _kuberay(path)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == kind
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


def test_ray_version_is_the_locked_and_installed_ray() -> None:
    import ray

    assert ray.__version__ == _locked_version("ray")
    for where, spec in _cluster_specs().items():
        assert spec["rayVersion"] == ray.__version__, f"{where}: rayVersion must be {ray.__version__}"


@pytest.mark.parametrize("where", [_rel(RAYCLUSTER), _rel(RAYJOB)])
def test_cpu_head_group(where: str) -> None:
    head = _cluster_specs()[where]["headGroupSpec"]
    params = head["rayStartParams"]
    assert params.get("dashboard-host") == "0.0.0.0"
    assert params.get("num-cpus") == "0", "the head should not run tasks (num-cpus must be the string '0')"
    assert all(isinstance(v, str) for v in params.values()), "rayStartParams values must be strings"
    (container,) = _containers(head["template"])
    ports = {p["containerPort"] for p in container["ports"]}
    assert {6379, 8265, 10001} <= ports
    assert _gpus(container) == 0 and _gpus(container, "requests") == 0, "the head is CPU-only"


@pytest.mark.parametrize("where", [_rel(RAYCLUSTER), _rel(RAYJOB)])
def test_gpu_worker_group(where: str) -> None:
    groups = _cluster_specs()[where]["workerGroupSpecs"]
    gpu_groups = [g for g in groups if any(_gpus(c) for c in _containers(g["template"]))]
    assert gpu_groups, f"{where}: no worker group requests nvidia.com/gpu"
    for group in gpu_groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        pod = group["template"]["spec"]
        assert any(
            t.get("key") == "nvidia.com/gpu" and t.get("operator") in ("Exists", "Equal")
            for t in pod.get("tolerations", [])
        ), f"{where}/{group['groupName']}: tolerate the nvidia.com/gpu taint"
        for container in _containers(group["template"]):
            assert _gpus(container) >= 1
            assert _gpus(container, "requests") == _gpus(container), "GPU requests must equal limits"
            pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
            assert "ray stop" in " ".join(pre_stop)
        mounts = {m["mountPath"] for c in _containers(group["template"]) for m in c.get("volumeMounts", [])}
        assert "/dev/shm" in mounts, "give Ray's object store a real /dev/shm"


def test_credentials_come_from_the_secret() -> None:
    for where, spec in _cluster_specs().items():
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            for container in _containers(group["template"]):
                refs = [e.get("secretRef", {}).get("name") for e in container.get("envFrom", [])]
                assert S3_SECRET in refs, f"{where}/{container['name']}: envFrom the {S3_SECRET} Secret"
                for env in container.get("env", []):
                    if SECRET_NAME.search(env["name"]):
                        assert "value" not in env, f"{where}: {env['name']} must come from a Secret"
                        assert "secretKeyRef" in env["valueFrom"]


def test_rayjob_uses_the_same_groups_as_the_raycluster() -> None:
    cluster = _kuberay(RAYCLUSTER)["spec"]
    job_cluster = _kuberay(RAYJOB)["spec"]["rayClusterSpec"]

    def group(spec: dict[str, Any], instance: str) -> dict[str, Any]:
        # The instance label names the cluster (the NetworkPolicies select by it): the only difference.
        spec = json.loads(json.dumps(spec))
        labels = spec["template"]["metadata"]["labels"]
        assert labels.pop("app.kubernetes.io/instance") == instance
        return {k: v for k, v in spec.items() if k not in ("replicas", "minReplicas", "maxReplicas")}

    job_name = _kuberay(RAYJOB)["metadata"]["name"]
    cluster_name = _kuberay(RAYCLUSTER)["metadata"]["name"]
    assert group(job_cluster["headGroupSpec"], job_name) == group(cluster["headGroupSpec"], cluster_name)
    assert [group(g, job_name) for g in job_cluster["workerGroupSpecs"]] == [
        group(g, cluster_name) for g in cluster["workerGroupSpecs"]
    ]
    assert job_cluster["authOptions"] == cluster["authOptions"]


def test_rayjob_lifecycle() -> None:
    spec = _kuberay(RAYJOB)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "SidecarMode")


def test_rayjob_entrypoint_is_the_cli_with_a_valid_config() -> None:
    from pipelines.cli import build_parser
    from pipelines.config import load_config

    spec = _kuberay(RAYJOB)["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "vaeaug"
    assert _pyproject()["project"]["scripts"]["vaeaug"] == "pipelines.cli:main"
    args = build_parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown command or option
    assert args.command == "run"
    assert args.config, "the entrypoint must pass --config"
    config_path = _repo_path(args.config)
    assert config_path.is_file(), f"{args.config} is not in the repository (the image copies deploy/)"
    cfg = load_config(config_path, args.overrides)
    # Every Ray Train worker needs a GPU of the job's cluster.
    if cfg.train.use_gpu:
        groups = spec["rayClusterSpec"]["workerGroupSpecs"]
        gpus = sum(g["maxReplicas"] * sum(_gpus(c) for c in _containers(g["template"])) for g in groups)
        assert cfg.train.num_workers <= gpus, f"{cfg.train.num_workers} GPU workers > {gpus} GPUs"
    # Several pods write checkpoints and outputs: they need shared (object) storage.
    assert "://" in cfg.train.storage_path and "://" in cfg.output_dir


@pytest.mark.parametrize("path", sorted((DEPLOY / "configs").glob("*.yaml")), ids=_rel)
def test_example_configs_load(path: Path) -> None:
    """Every value the file sets is what the loaded config holds (local paths made absolute)."""
    from pipelines.config import absolute_local, load_config

    def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
        return out

    given = leaves(_load(path))
    loaded = leaves(load_config(path).to_dict())
    assert given and set(given) <= set(loaded)
    for key, value in given.items():
        path_like = isinstance(value, str) and (key.endswith(("path", "output", "output_dir", "storage")))
        expected = absolute_local(value) if path_like else value
        assert loaded[key] == expected, f"{key}: file has {value!r}, config holds {loaded[key]!r}"


# ------------------------------------------------------------------------------------ Prefect
def _deployments() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in _load(PREFECT_YAML)["deployments"]}


def _k8s_template() -> dict[str, Any]:
    return json.loads(K8S_TEMPLATE.read_text())


def test_prefect_yaml_is_valid_for_prefect_deploy() -> None:
    # `prefect deploy` validates with this model and silently skips a file that fails; its models
    # also ignore unknown keys, so typos are checked against their fields here.
    from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel, WorkPoolConfig

    raw = _load(PREFECT_YAML)
    PrefectYamlModel.model_validate(raw)
    assert set(raw) <= {"name", "prefect-version", "build", "push", "pull", "deployments"}
    for dep in raw["deployments"]:
        unknown = set(dep) - set(DeploymentConfig.model_fields)
        assert not unknown, f"deployment {dep['name']}: unknown keys {unknown}"
        assert set(dep["work_pool"]) <= set(WorkPoolConfig.model_fields)


def test_prefect_version_is_the_locked_prefect() -> None:
    import prefect

    locked = _locked_version("prefect")
    assert prefect.__version__ == locked
    assert str(_load(PREFECT_YAML)["prefect-version"]) == locked


def test_flow_runs_start_in_the_image_workdir() -> None:
    (step,) = _load(PREFECT_YAML)["pull"]
    assert step == {"prefect.deployments.steps.set_working_directory": {"directory": IMAGE_DIR}}


def test_local_pull_step_uses_vaeaug_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Pull steps are templated with the worker's environment when the run starts.
    from prefect.utilities.templating import apply_values

    (step,) = _deployments()["nightly-local"]["pull"]
    inputs = step["prefect.deployments.steps.set_working_directory"]
    monkeypatch.setenv("VAEAUG_HOME", str(tmp_path))
    assert apply_values(inputs, dict(os.environ)) == {"directory": str(tmp_path)}
    env = " ".join(args for instr, args in _final_stage() if instr == "ENV").split()
    assert f"VAEAUG_HOME={IMAGE_DIR}" in env, "the image must set VAEAUG_HOME for its process worker"


def test_work_pools() -> None:
    deps = _deployments()
    pools = {d["work_pool"]["name"] for d in deps.values()}
    assert pools == {"local-process", "k8s-gpu"}
    compose_worker = " ".join(_load(COMPOSE)["services"]["prefect-worker"]["command"])
    assert "prefect worker start --pool local-process --type process" in compose_worker


@pytest.mark.parametrize("name", ["nightly-local", "weekly-k8s-gpu"])
def test_schedules_are_valid_crons(name: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    schedules = _deployments()[name]["schedules"]
    assert schedules, f"{name} has no schedule"
    for sched in schedules:
        assert CRON_5_FIELDS.match(sched["cron"]), f"{sched['cron']!r} is not a 5-field cron"
        assert sched["timezone"] == "UTC"
        CronSchedule(cron=sched["cron"], timezone=sched["timezone"])  # Prefect's own validation


def test_deployment_entrypoints_import_the_flow() -> None:
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    for name, dep in _deployments().items():
        path, _, func = dep["entrypoint"].partition(":")
        assert (REPO / path).is_file(), f"{name}: {path} does not exist"
        flow = load_flow_from_entrypoint(f"{REPO / path}:{func}", use_placeholder_flow=False)
        assert isinstance(flow, Flow), f"{name}: {dep['entrypoint']} is not a Prefect flow"
        assert flow.name == FLOW_NAME


@pytest.mark.parametrize("name", ["nightly-local", "weekly-k8s-gpu"])
def test_deployment_parameters_fit_the_flow_and_load(name: str) -> None:
    from prefect.flows import load_flow_from_entrypoint

    from pipelines.config import load_config

    dep = _deployments()[name]
    path, _, func = dep["entrypoint"].partition(":")
    flow = load_flow_from_entrypoint(f"{REPO / path}:{func}", use_placeholder_flow=False)
    params = flow.validate_parameters(dep["parameters"])  # raises on unknown or mistyped parameters
    config_path = params.get("config_path")
    assert config_path and not os.path.isabs(config_path), "config paths are relative to the repository"
    assert (REPO / config_path).is_file()
    settings = {k: v for k, v in params.items() if k not in ("config_path", "overrides") and v is not None}
    cfg = load_config(REPO / config_path, params.get("overrides"), settings=settings)
    job_vars = dep["work_pool"].get("job_variables", {})
    if cfg.train.use_gpu:
        assert cfg.train.num_workers <= job_vars.get("gpu", 0), "one GPU per Ray Train worker in the pod"


def test_k8s_template_extends_prefects_default() -> None:
    default_path = (
        Path(importlib.util.find_spec("prefect").origin).parent
        / "server/api/collections_data/views/aggregate-worker-metadata.json"
    )
    if not default_path.is_file():
        pytest.skip("this Prefect does not bundle the worker metadata")
    default = json.loads(default_path.read_text())["prefect-kubernetes"]["kubernetes"]
    default = default["default_base_job_configuration"]
    ours = _k8s_template()
    assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"])
    assert set(default["job_configuration"]) <= set(ours["job_configuration"])


def test_k8s_template_wires_the_gpu_variable() -> None:
    template = _k8s_template()
    gpu = template["variables"]["properties"]["gpu"]
    assert gpu["type"] == "integer"
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu }}"
    assert container["image"] == "{{ image }}"
    assert pod["tolerations"] == "{{ tolerations }}"
    assert container["envFrom"] == "{{ env_from }}"


def _render(job_variables: dict[str, Any]) -> dict[str, Any]:
    """The Job a Prefect Kubernetes worker would create: defaults, then job variables, templated."""
    from prefect.utilities.templating import apply_values

    template = _k8s_template()
    props = template["variables"]["properties"]
    values = {k: v["default"] for k, v in props.items() if "default" in v} | job_variables
    return apply_values(template["job_configuration"], values)["job_manifest"]


def test_k8s_deployment_job_variables_render_a_gpu_job() -> None:
    import jsonschema

    dep = _deployments()["weekly-k8s-gpu"]
    job_vars = dep["work_pool"]["job_variables"]
    template = _k8s_template()
    unknown = set(job_vars) - set(template["variables"]["properties"])
    assert not unknown, f"job variables not in the pool's template: {unknown}"
    jsonschema.validate(job_vars, template["variables"])

    pod = _render(job_vars)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith(f"{IMAGE}@sha256:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == job_vars["gpu"] >= 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert {"secretRef": {"name": S3_SECRET}} in container["envFrom"]
    assert not any(SECRET_NAME.search(k) for k in job_vars.get("env", {})), "credentials go in the Secret"


def test_k8s_template_without_gpu_renders_a_cpu_job() -> None:
    pod = _render({"image": IMAGE})["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "tolerations" not in pod and "envFrom" not in container


# ------------------------------------------------------------------------------------ compose
def _services() -> dict[str, dict[str, Any]]:
    return _load(COMPOSE)["services"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def test_compose_has_the_stack() -> None:
    services = _services()
    assert COMPOSE_SERVICES <= set(services), f"missing services: {COMPOSE_SERVICES - set(services)}"
    init = [
        name
        for name, svc in services.items()
        if "minio" in svc.get("depends_on", {}) and str(svc.get("restart")) == "no"
    ]
    assert init, "a one-shot job must create the bucket once MinIO is up"
    script = services[init[0]]["command"][-1]
    assert (REPO / script).is_file(), f"{script} (the bucket job) is not in the repository"


def test_compose_prefect_server_is_the_locked_prefect() -> None:
    var = REQUIRED_VARIABLE.match(_services()["prefect-server"]["image"])
    assert var, "prefect-server: the image (by digest) comes from deploy/.env"
    documented = re.search(r"prefecthq/prefect:(\S+?)@sha256:", var.group("message"))
    assert documented, "the message must show prefecthq/prefect:<tag>@sha256:<digest>"
    assert documented.group(1).split("-")[0] == _locked_version("prefect"), (
        "Prefect server = the locked Prefect"
    )


def test_compose_prefect_server_uses_postgres() -> None:
    services = _services()
    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    server = services["prefect-server"]
    url = _environment(server)["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker = services["prefect-worker"]
    assert _environment(worker)["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"


def test_compose_ray_cluster() -> None:
    services = _services()
    head = " ".join(services["ray-head"]["command"])
    assert head.startswith("ray start --head") and "--block" in head and "--port=6379" in head
    worker = " ".join(services["ray-worker"]["command"])
    assert worker.startswith("ray start --address=ray-head:6379") and "--block" in worker
    # Flow runs are Ray drivers: Ray only connects a driver through a raylet on its own host, so
    # the Prefect worker's container joins the cluster (without CPUs) before starting the worker.
    assert _environment(services["prefect-worker"])["RAY_ADDRESS"] == "ray-head:6379"
    prefect_worker = " ".join(services["prefect-worker"]["command"])
    joins = prefect_worker.find("ray start --address=ray-head:6379 --num-cpus=0")
    assert 0 <= joins < prefect_worker.find("prefect worker start")
    assert services["prefect-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    for name in ("prefect-worker", "ray-head", "ray-worker"):
        env = _environment(services[name])
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000", f"{name}: point S3 clients at MinIO"
        assert services[name].get("shm_size"), f"{name}: Ray needs more than the default 64 MB /dev/shm"


def test_compose_has_no_literal_secrets() -> None:
    for name, svc in _services().items():
        for key, value in _environment(svc).items():
            if SECRET_NAME.search(key):
                assert REQUIRED_VARIABLE.fullmatch(value), f"{name}: {key} must be a ${{VAR:?message}}"
            # URLs with credentials (user:password@host): the password must be a substitution too.
            masked = SUBSTITUTION.sub("<subst>", value)
            for user_info in re.findall(r"://([^/@\s]+)@", masked):
                _, _, password = user_info.partition(":")
                assert password in ("", "<subst>"), f"{name}: {key} embeds a literal password"


def test_env_example_defines_every_compose_variable() -> None:
    used = {m.group("name") for m in SUBSTITUTION.finditer(COMPOSE.read_text())}
    for svc in _services().values():  # bare build args take their value from deploy/.env
        used |= {a for a in (svc.get("build") or {}).get("args", []) if "=" not in a}
    defined = set(_env_example())
    assert used <= defined, f"add to .env.example: {sorted(used - defined)}"


def test_create_bucket_job_is_idempotent(s3) -> None:
    # The compose job against a real S3-protocol server, configured through AWS_* like in compose.
    import s3fs

    spec = importlib.util.spec_from_file_location("create_bucket", DEPLOY / "compose" / "create_bucket.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bucket = f"vaeaug-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem.clear_instance_cache()
    assert module.ensure_bucket(bucket) is True
    assert module.ensure_bucket(bucket) is False
    assert s3fs.S3FileSystem().exists(bucket)


# ==================================================================================== security
# ------------------------------------------------------------------------------------ pinned images
def _is_documented_required(ref: str) -> bool:
    """A compose `${VAR:?message}` whose message shows the name:tag@sha256: form to set."""
    var = REQUIRED_VARIABLE.match(ref)
    return bool(var and re.search(r"\S+:\S+@sha256:", var.group("message")))


def _dockerfile_image_refs() -> dict[str, str]:
    """Where -> reference: the syntax frontend and every FROM that is not an earlier stage."""
    refs = {"# syntax": DOCKERFILE.read_text().splitlines()[0].partition("=")[2].strip()}
    stages: set[str] = set()
    for instr, args in _dockerfile():
        if instr != "FROM":
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        if words[0] not in stages:
            refs[f"FROM {words[0]}"] = words[0]
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
    return refs


def test_every_image_is_pinned_by_digest() -> None:
    bad = []
    for path in (RAYCLUSTER, RAYJOB, PREFECT_YAML):
        for image in (i for doc in _docs(path) for i in _images(doc)):
            placeholder = image == f"{IMAGE}@sha256:{DIGEST_PLACEHOLDER}"  # the project image before `pin`
            if not (PINNED_IMAGE.match(image) or placeholder):
                bad.append(f"{_rel(path)}: {image}")
    for name, svc in _services().items():
        if not (PINNED_IMAGE.match(svc["image"]) or _is_documented_required(svc["image"])):
            bad.append(f"{_rel(COMPOSE)}:{name}: {svc['image']}")
    no_default = _dockerfile_args_without_default()
    for where, ref in _dockerfile_image_refs().items():
        arg = re.fullmatch(r"\$\{(\w+)\}", ref)
        if arg:  # a build arg without default, documented in the header with its name:tag
            ok = arg.group(1) in no_default and _documented_build_arg(arg.group(1))
        else:
            ok = PINNED_IMAGE.match(ref)
        if not ok:
            bad.append(f"{_rel(DOCKERFILE)}: {where}")
    assert not bad, f"images not pinned by digest (name:tag@sha256:<64 hex>): {bad}"


def test_dockerfile_base_images_have_no_default() -> None:
    # A default would be used silently; without one the build stops until the digest is given.
    assert {"CUDA_IMAGE", "UV_IMAGE"} <= _dockerfile_args_without_default()
    assert _documented_build_arg("UV_IMAGE").startswith("ghcr.io/astral-sh/uv:")
    assert "args" in _services()["ray-head"]["build"], "compose passes the base images from deploy/.env"
    assert set(_services()["ray-head"]["build"]["args"]) == {"CUDA_IMAGE", "UV_IMAGE"}


# ------------------------------------------------------------------------------------ deploy/images.py
def _images_tool():
    if "deploy_images" not in sys.modules:  # dataclasses look their module up in sys.modules
        spec = importlib.util.spec_from_file_location("deploy_images", DEPLOY / "images.py")
        sys.modules["deploy_images"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["deploy_images"])
    return sys.modules["deploy_images"]


def _run_images_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "images.py"), *args], capture_output=True, text=True, timeout=120
    )


def test_images_tool_passes_the_repository_and_refuses_the_placeholder() -> None:
    tool = _images_tool()
    count, problems = tool.check(DEPLOY, allow_placeholder=True)
    assert not problems, problems
    assert count >= 12, f"the tool found only {count} image references"
    _, strict = tool.check(DEPLOY)
    placeholders = sum(
        f"{IMAGE}@sha256:{DIGEST_PLACEHOLDER}" in p.read_text() for p in (RAYCLUSTER, RAYJOB, PREFECT_YAML)
    )
    assert bool(strict) == bool(placeholders), "deploying must be refused while a placeholder is left"
    for line in strict:
        assert "\n" not in line and "placeholder" in line and "images.py pin" in line, line


def test_images_tool_pin_fills_in_the_digest(tmp_path: Path) -> None:
    shutil.copytree(DEPLOY, tmp_path / "deploy", ignore=shutil.ignore_patterns(".env", "__pycache__"))
    deploy = tmp_path / "deploy"
    first, second = f"{IMAGE}@sha256:{'a' * 64}", f"{IMAGE}@sha256:{'b' * 64}"

    done = _run_images_tool("--deploy-dir", str(deploy), "pin", first)
    assert done.returncode == 0, done.stderr
    assert _run_images_tool("--deploy-dir", str(deploy), "check").returncode == 0
    for path in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "prefect.yaml"):
        text = (deploy / path).read_text()
        assert first in text and DIGEST_PLACEHOLDER not in text, path
        # Text replacement: comments and layout stay as they were.
        assert len(text.splitlines()) == len((DEPLOY / path).read_text().splitlines())
    # A new push replaces the older digest of the same name:tag.
    assert _run_images_tool("--deploy-dir", str(deploy), "pin", second).returncode == 0
    assert first not in (deploy / "prefect.yaml").read_text()
    assert second in (deploy / "kuberay/rayjob.yaml").read_text()

    for wrong in (f"{IMAGE_REPO}:9.9.9@sha256:{'c' * 64}", f"{IMAGE}@sha256:short", IMAGE):
        failed = _run_images_tool("--deploy-dir", str(deploy), "pin", wrong)
        assert failed.returncode == 2, wrong
        (line,) = failed.stderr.strip().splitlines()  # one line naming the problem and the fix
        assert line.startswith("error: ") and ":" in line[7:], line


def test_images_tool_flags_unpinned_references(tmp_path: Path) -> None:
    digest = "0" * 64
    (tmp_path / "kuberay").mkdir()
    (tmp_path / "kuberay" / "a.yaml").write_text(
        "kind: X\nspec:\n  containers:\n"
        "    - image: busybox:latest\n"  # a tag only
        f"    - image: busybox@sha256:{digest}\n"  # a digest without the tag to read
        f"    - image: busybox:1.36@sha256:{digest}\n"  # pinned
        "---\nkind: Y\nimage: redis:7\n"  # in a second document
    )
    (tmp_path / "docker-compose.yaml").write_text(
        "services:\n"
        "  a: {image: 'postgres:16'}\n"
        "  b: {image: '${B_IMAGE:-postgres:16}'}\n"  # a fallback is not a pin
        "  c: {image: '${C_IMAGE:?set C_IMAGE to postgres:16@sha256:<digest>}'}\n"
        "  d: {image: x, build: {context: ., args: {BASE_IMAGE: 'python:3.11'}}}\n"
    )
    (tmp_path / "Dockerfile").write_text(
        "# syntax=docker/dockerfile:1.7\nARG BASE_IMAGE=python:3.11-slim\nARG OTHER\n"
        "FROM ${BASE_IMAGE} AS base\nFROM base\nFROM ${OTHER}\n"
        f"FROM debian:12@sha256:{digest}\n"
    )
    problems = _images_tool().check(tmp_path)[1]
    flagged = "\n".join(problems)
    for expected in (
        "busybox:latest",
        f"busybox@sha256:{digest}",
        "redis:7",
        "services.a.image = postgres:16",
        "services.b.image",
        "services.d.image = x",
        "services.d.build.args.BASE_IMAGE",
        "# syntax=",
        "ARG BASE_IMAGE",
        "--build-arg OTHER=",
    ):
        assert expected in flagged, f"{expected!r} not flagged in:\n{flagged}"
    assert "services.c.image" not in flagged and "busybox:1.36" not in flagged and "debian:12" not in flagged
    assert len(problems) == 10, flagged
    done = _run_images_tool("--deploy-dir", str(tmp_path), "check")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 10


# ------------------------------------------------------------------------------------ containers
def _prefect_flow_pod() -> dict[str, Any]:
    return _render(_deployments()["weekly-k8s-gpu"]["work_pool"]["job_variables"])["spec"]["template"]


def _pod_templates() -> dict[str, dict[str, Any]]:
    """Every pod template of the Kubernetes manifests, by where it is."""
    pods = {}
    for where, spec in _cluster_specs().items():
        pods[f"{where}:head"] = spec["headGroupSpec"]["template"]
        for group in spec["workerGroupSpecs"]:
            pods[f"{where}:{group['groupName']}"] = group["template"]
    pods[f"{_rel(RAYJOB)}:submitter"] = _kuberay(RAYJOB)["spec"]["submitterPodTemplate"]
    pods[f"{_rel(K8S_TEMPLATE)}:flow-run"] = _prefect_flow_pod()
    return pods


def _container_problems(container: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    sc = container.get("securityContext") or {}
    problems = []
    if sc.get("runAsNonRoot") is not True:
        problems.append("runAsNonRoot: true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation: false")
    if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
        problems.append("capabilities: {drop: [ALL]} and nothing added")
    if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("seccompProfile: {type: RuntimeDefault}")
    if sc.get("privileged"):
        problems.append("no privileged")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem: true")
    # A read-only root needs writable scratch where Ray, torch and Prefect write.
    scratch = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    for path in ("/tmp", IMAGE_HOME):
        if mounts.get(path) not in scratch:
            problems.append(f"an emptyDir mounted at {path}")
    return problems


def test_every_container_is_restricted() -> None:
    assert "--create-home" in DOCKERFILE.read_text() and IMAGE_HOME == "/home/vaeaug"
    bad = {}
    for where, template in _pod_templates().items():
        pod = template["spec"]
        assert pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot"
        assert pod["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        assert not any("hostPath" in v for v in pod.get("volumes", [])), f"{where}: no hostPath volumes"
        for container in pod["containers"] + pod.get("initContainers", []):
            if problems := _container_problems(container, pod):
                bad[f"{where}/{container['name']}"] = problems
    assert not bad, f"containers must set: {bad}"
    assert len(_pod_templates()) == 6


def test_autoscaler_sidecar_is_restricted() -> None:
    # KubeRay adds the autoscaler container to the head pod; its securityContext comes from here.
    options = _kuberay(RAYCLUSTER)["spec"]["autoscalerOptions"]
    head = _cluster_specs()[_rel(RAYCLUSTER)]["headGroupSpec"]["template"]
    sidecar = {"name": "autoscaler", **{k: options[k] for k in ("securityContext", "volumeMounts")}}
    assert _container_problems(sidecar, head["spec"]) == []


def test_pods_that_never_call_the_kubernetes_api_get_no_token() -> None:
    for where, template in _pod_templates().items():
        if not where.endswith(":head"):  # the head runs the autoscaler, which scales through the API
            assert template["spec"].get("automountServiceAccountToken") is False, where


# ------------------------------------------------------------------------------------ Ray token auth
def _ray_containers() -> dict[str, dict[str, Any]]:
    pods = {k: v for k, v in _pod_templates().items() if not k.endswith(":flow-run")}
    return {f"{where}/{c['name']}": c for where, pod in pods.items() for c in pod["spec"]["containers"]}


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=_rel)
def test_ray_token_auth_is_on(path: Path) -> None:
    spec = _kuberay(path)["spec"]
    cluster = spec.get("rayClusterSpec", spec)
    assert cluster["authOptions"] == {"mode": "token", "secretName": RAY_AUTH_SECRET}
    major, minor = map(int, cluster["rayVersion"].split(".")[:2])
    assert (major, minor) >= (2, 52), "Ray token authentication needs Ray >= 2.52"
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP", "the head stays inside the cluster"


def test_every_ray_container_gets_the_token_from_the_secret() -> None:
    for where, container in _ray_containers().items():
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE=token"
        token = env.get("RAY_AUTH_TOKEN", {})
        assert "value" not in token, f"{where}: the token must not be written in the manifest"
        ref = token.get("valueFrom", {}).get("secretKeyRef")
        assert ref == {"name": RAY_AUTH_SECRET, "key": "auth_token"}, (
            f"{where}: RAY_AUTH_TOKEN from the Secret"
        )
    assert len(_ray_containers()) == 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http_status(url: str, token: str | None = None) -> int | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=3) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def _manifest_env(container: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """A container's env as the kubelet would set it, with `secrets` as the Secret's values."""
    env = {}
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = secrets[f"{ref['name']}/{ref['key']}"] if ref else item["value"]
    return env


@pytest.mark.slow
def test_the_manifest_auth_env_locks_a_real_ray_head() -> None:
    # `ray start --head` of the locked Ray with exactly the env the head container gets: the jobs
    # API refuses requests without the token, and the health endpoints that KubeRay's probes and
    # the compose healthcheck call stay open.
    token = uuid.uuid4().hex
    head = _ray_containers()[f"{_rel(RAYCLUSTER)}:head/ray-head"]
    temp = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {**os.environ, "HOME": str(temp), **_manifest_env(head, {f"{RAY_AUTH_SECRET}/auth_token": token})}
    env.pop("RAY_ADDRESS", None)
    flags = ["port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port"]
    flags += ["metrics-export-port", "node-manager-port", "object-manager-port", "runtime-env-agent-port"]
    ports = {flag: _free_port() for flag in [*flags, "ray-client-server-port"]}
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus=0"]
    command += ["--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--temp-dir={temp}/ray"]
    command += [f"--{flag}={port}" for flag, port in ports.items()]
    log = (temp / "ray.log").open("w")
    ray = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + 120
        while _http_status(f"{base}/api/gcs_healthz") != 200:
            assert ray.poll() is None, (temp / "ray.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the Ray head did not come up in 120 s"
            time.sleep(0.5)
        assert _http_status(f"{base}/api/jobs/") == 401, "the jobs API must refuse requests without a token"
        assert _http_status(f"{base}/api/jobs/", uuid.uuid4().hex) == 403, "and with a wrong one"
        assert _http_status(f"{base}/api/jobs/", token) == 200
        compose_check = " ".join(_services()["ray-head"]["healthcheck"]["test"])
        (path,) = re.findall(r"localhost:8265(/\S+)", compose_check)
        assert _http_status(f"{base}{path}") == 200, "the compose healthcheck needs no token"
    finally:
        ray.terminate()  # `ray start --block` stops the node's processes on SIGTERM
        try:
            ray.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ray.pid, signal.SIGKILL)  # whatever is left of the group this test started
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


# ------------------------------------------------------------------------------------ NetworkPolicies
def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions; {} selects all)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def _ray_pod_labels(template: dict[str, Any], node_type: str, group: str) -> dict[str, str]:
    """The labels KubeRay gives a Ray pod: its defaults, the template's, then the fixed ones."""
    labels = {"app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}
    labels |= {"ray.io/is-ray-node": "yes", "ray.io/identifier": f"x-{node_type}"}
    labels |= template["metadata"].get("labels", {})
    return labels | {"ray.io/node-type": node_type, "ray.io/group": group, "ray.io/cluster": "x-generated"}


def _admitted_ports(
    policies: list[dict[str, Any]], target: dict[str, str], source: dict[str, str], namespace: str = "vaeaug"
) -> set[int | str]:
    """Ports on which `source` (labels, in `namespace`) may reach `target` in namespace vaeaug; '*': all."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], target)]
    if not any("Ingress" in p["spec"].get("policyTypes", ["Ingress"]) for p in selecting):
        return {"*"}  # not isolated
    ports: set[int | str] = set()
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            admitted = peers is None or any(
                "ipBlock" in peer  # counted as admitting anyone: the policies must not use one
                or (
                    _selects(peer.get("namespaceSelector", {}), {"kubernetes.io/metadata.name": namespace})
                    if "namespaceSelector" in peer
                    else namespace == "vaeaug"
                )
                and _selects(peer.get("podSelector", {}), source)
                for peer in peers
            )
            if admitted:
                ports |= {p["port"] for p in rule.get("ports", [])} or {"*"}
    return ports


def _policies(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in _docs(path) if d["kind"] == "NetworkPolicy"]
    assert all(d["apiVersion"] == "networking.k8s.io/v1" for d in docs)
    return docs


def _cluster_pods(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    spec = _cluster_specs()[_rel(path)]
    head = _ray_pod_labels(spec["headGroupSpec"]["template"], "head", "headgroup")
    (group,) = spec["workerGroupSpecs"]
    return head, _ray_pod_labels(group["template"], "worker", group["groupName"])


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=_rel)
def test_network_policies_isolate_the_cluster(path: Path) -> None:
    policies = _policies(path)
    head, worker = _cluster_pods(path)
    assert any(_selects(p["spec"]["podSelector"], head) for p in policies), "a NetworkPolicy selects the head"
    # The cluster's own pods reach each other on every port (GCS, raylets, object transfer, NCCL).
    for source in (head, worker):
        assert _admitted_ports(policies, head, source) == {"*"}
        assert _admitted_ports(policies, worker, source) == {"*"}
    # Everyone else: nothing, also a pod that copies the cluster's labels from another namespace.
    stranger = {"app": "anything"}
    for target in (head, worker):
        assert _admitted_ports(policies, target, stranger) == set()
        assert _admitted_ports(policies, target, worker, namespace="elsewhere") == set()
    # No rule is opened to addresses or to any pod at all.
    for policy in policies:
        for rule in policy["spec"]["ingress"]:
            assert rule.get("from"), f"{policy['metadata']['name']}: every rule names its peers"
            assert not any("ipBlock" in peer or peer == {} for peer in rule["from"])
    # The two manifests' clusters do not reach each other.
    other = RAYJOB if path == RAYCLUSTER else RAYCLUSTER
    assert _admitted_ports(policies, head, _cluster_pods(other)[1]) == set()


def test_prefect_pods_reach_only_the_raycluster_head_ports() -> None:
    policies = _policies(RAYCLUSTER)
    head, worker = _cluster_pods(RAYCLUSTER)
    flow_run = _prefect_flow_pod()["metadata"]["labels"] | {"prefect.io/flow-run-id": "x", "job-name": "x"}
    prefect_worker = {"app.kubernetes.io/name": "prefect-worker", "app.kubernetes.io/component": "worker"}
    for source in (flow_run, prefect_worker):
        assert _admitted_ports(policies, head, source) == RAY_PORTS
        assert _admitted_ports(policies, worker, source) == set()
    head_ports = {
        p["containerPort"]
        for p in _containers(_cluster_specs()[_rel(RAYCLUSTER)]["headGroupSpec"]["template"])[0]["ports"]
    }
    assert RAY_PORTS <= head_ports


def test_rayjob_submitter_and_operator_reach_only_the_jobs_api() -> None:
    policies = _policies(RAYJOB)
    head, worker = _cluster_pods(RAYJOB)
    submitter = _kuberay(RAYJOB)["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    submitter = submitter | {"batch.kubernetes.io/job-name": "vaeaug-mnist", "job-name": "vaeaug-mnist"}
    operator = {
        "app.kubernetes.io/name": "kuberay-operator",
        "app.kubernetes.io/instance": "kuberay-operator",
    }
    assert _admitted_ports(policies, head, submitter) == {8265}
    assert _admitted_ports(policies, head, operator, namespace="kuberay-system") == {8265}
    assert _admitted_ports(policies, head, operator) == set(), "only the operator's namespace"
    for source in (submitter, operator):
        assert _admitted_ports(policies, worker, source, namespace="kuberay-system") == set()
    flow_run = _prefect_flow_pod()["metadata"]["labels"]
    assert _admitted_ports(policies, head, flow_run) == set(), "Prefect does not use the job's cluster"


# ------------------------------------------------------------------------------------ compose secrets
def test_compose_secrets_have_no_default() -> None:
    text = COMPOSE.read_text().replace("$$", "")  # `$${VAR}` is the container's variable, not compose's
    seen = set()
    for match in SUBSTITUTION.finditer(text):
        name = match.group("name")
        if COMPOSE_SECRET.search(name):
            seen.add(name)
            required = REQUIRED_VARIABLE.fullmatch(match.group(0))
            assert required, f"{match.group(0)}: a secret needs ${{{name}:?message}}, never a default"
            assert "deploy/.env" in required.group("message"), "the message says where to set it"
    assert seen >= {
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
        "RAY_AUTH_TOKEN",
        "PREFECT_API_AUTH_STRING",
    }, seen


def test_env_example_holds_no_values_for_secrets_or_images() -> None:
    for key, value in _env_example().items():
        if COMPOSE_SECRET.search(key) or key.endswith("_IMAGE"):
            assert value == "", f".env.example: {key} must be empty (compose then refuses to start)"


def test_compose_published_ports_bind_localhost() -> None:
    published = [(n, str(p)) for n, svc in _services().items() for p in svc.get("ports", [])]
    assert published, "the stack publishes its UIs"
    for name, port in published:
        assert port.startswith("127.0.0.1:"), f"{name}: publish {port} on 127.0.0.1 only"


def test_compose_ray_and_prefect_authenticate() -> None:
    services = _services()
    for name in ("prefect-worker", "ray-head", "ray-worker", "ray-worker-gpu"):
        env = _environment(services[name])
        assert env["RAY_AUTH_MODE"] == "token", name
        assert REQUIRED_VARIABLE.match(env["RAY_AUTH_TOKEN"]).group("name") == "RAY_AUTH_TOKEN"
        client = REQUIRED_VARIABLE.match(env["PREFECT_API_AUTH_STRING"])
        assert client and client.group("name") == "PREFECT_API_AUTH_STRING", name
        assert services[name].get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in services[name].get("security_opt", []), name
    server = _environment(services["prefect-server"])["PREFECT_SERVER_API_AUTH_STRING"]
    assert REQUIRED_VARIABLE.match(server).group("name") == "PREFECT_API_AUTH_STRING", "one secret, both ends"
