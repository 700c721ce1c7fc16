"""Static checks of deploy/: the files parse, agree with each other and with the locked project.

No cluster or Docker daemon is needed: the manifests are parsed with PyYAML, the Prefect files are
validated with Prefect's own models and templating, and the entrypoints and configs they name are
imported and loaded for real.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import tomllib
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
# Third-party images allowed in compose (repository -> why); everything else is the project image.
THIRD_PARTY_IMAGES = {"postgres", "minio/minio", "prefecthq/prefect"}

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


def _substitute_defaults(value: str) -> str:
    """Resolve compose `${VAR:-default}` the way compose does with an empty environment."""
    return SUBSTITUTION.sub(lambda m: m.group("default") or "", value)


def _image_repo_and_tag(image: str) -> tuple[str, str]:
    repo, _, tag = image.rpartition(":")
    if "/" in tag or not repo:  # "host:port/name" without a tag
        return image, ""
    return repo, tag


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_template["spec"]["containers"]


def _cluster_specs() -> dict[str, dict[str, Any]]:
    return {
        _rel(RAYCLUSTER): _load(RAYCLUSTER)["spec"],
        _rel(RAYJOB): _load(RAYJOB)["spec"]["rayClusterSpec"],
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


def test_one_project_image_everywhere() -> None:
    found: dict[str, set[str]] = {}
    for path in (RAYCLUSTER, RAYJOB):
        found[_rel(path)] = set(_images(_load(path)))
    for dep in _load(PREFECT_YAML)["deployments"]:
        image = dep.get("work_pool", {}).get("job_variables", {}).get("image")
        if image is not None:
            found[f"{_rel(PREFECT_YAML)}:{dep['name']}"] = {image}
    for name, svc in _load(COMPOSE)["services"].items():
        repo, _ = _image_repo_and_tag(_substitute_defaults(svc["image"]))
        if repo not in THIRD_PARTY_IMAGES:
            found[f"{_rel(COMPOSE)}:{name}"] = {_substitute_defaults(svc["image"])}
    env_example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and line[0] != "#"
    )
    found[_rel(ENV_EXAMPLE)] = {env_example["VAEAUG_IMAGE"]}

    assert len(found) >= 6, f"too few image references found: {found}"
    wrong = {where: images for where, images in found.items() if images != {IMAGE}}
    assert not wrong, f"every manifest must use the project image {IMAGE}: {wrong}"
    assert f"-t {IMAGE}" in (DEPLOY / "README.md").read_text(), "README's build command must tag the image"
    assert f"-t {IMAGE}" in DOCKERFILE.read_text(), "the Dockerfile's build comment must tag the image"


# ------------------------------------------------------------------------------------ Dockerfile
def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
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


def _expand_args(value: str) -> str:
    args = _dockerfile_args()
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    last_from = max(i for i, (instr, _) in enumerate(instructions) if instr == "FROM")
    return instructions[last_from:]


def test_dockerfile_base_image_is_cuda_capable() -> None:
    from_args = _final_stage()[0][1].split()
    base = _expand_args(from_args[0])
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
    doc = _load(path)
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
    cluster = _load(RAYCLUSTER)["spec"]
    job_cluster = _load(RAYJOB)["spec"]["rayClusterSpec"]
    assert job_cluster["headGroupSpec"] == cluster["headGroupSpec"]

    def shape(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        scaling = ("replicas", "minReplicas", "maxReplicas")
        return [{k: v for k, v in g.items() if k not in scaling} for g in groups]

    assert shape(job_cluster["workerGroupSpecs"]) == shape(cluster["workerGroupSpecs"])


def test_rayjob_lifecycle() -> None:
    spec = _load(RAYJOB)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "SidecarMode")


def test_rayjob_entrypoint_is_the_cli_with_a_valid_config() -> None:
    from pipelines.cli import build_parser
    from pipelines.config import load_config

    spec = _load(RAYJOB)["spec"]
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
    from pipelines.config import load_config

    load_config(path)


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
    kwargs = {"settings": params["config"]} if params.get("config") else {}
    cfg = load_config(REPO / config_path, params.get("overrides"), **kwargs)
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
    assert container["image"] == IMAGE
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


def test_compose_third_party_images_are_pinned() -> None:
    for name, svc in _services().items():
        repo, tag = _image_repo_and_tag(_substitute_defaults(svc["image"]))
        if repo in THIRD_PARTY_IMAGES:
            assert tag and tag != "latest", f"{name}: pin {repo}"
    _, prefect_tag = _image_repo_and_tag(_services()["prefect-server"]["image"])
    assert prefect_tag.split("-")[0] == _locked_version("prefect"), "Prefect server = the locked Prefect"


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
                assert SUBSTITUTION.fullmatch(value), f"{name}: {key} must be a ${{VAR:-dev-default}}"
            # URLs with credentials (user:password@host): the password must be a substitution too.
            masked = SUBSTITUTION.sub("<subst>", value)
            for user_info in re.findall(r"://([^/@\s]+)@", masked):
                _, _, password = user_info.partition(":")
                assert password in ("", "<subst>"), f"{name}: {key} embeds a literal password"


def test_env_example_defines_every_compose_variable() -> None:
    used = {m.group("name") for m in SUBSTITUTION.finditer(COMPOSE.read_text())}
    defined = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and line[0] != "#"
    }
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
