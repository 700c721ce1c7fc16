"""Check, and fill in, the image digests of deploy/: every image must be `name:tag@sha256:<64 hex>`.

A tag alone can be moved upstream (or by whoever controls the registry), so what runs would no
longer be what was reviewed; a digest cannot. From the repository root, with the project's venv:

    python deploy/images.py check                      # before deploying: exit 2 and one line per problem
    python deploy/images.py check --allow-placeholder  # what the repository itself passes (tests)
    python deploy/images.py pin ghcr.io/vaeaug/vaeaug:0.1.0@sha256:<digest>

`pin` writes a pushed image's digest into the Kubernetes and Prefect manifests in place of the
`@sha256:REPLACE_WITH_DIGEST` placeholder (or of an older digest of the same name:tag). Look a
digest up with `crane digest <name:tag>` or `docker buildx imagetools inspect <name:tag>`.

Where images are found:
- kuberay/*.yaml and prefect.yaml: every `image` value (the Prefect job template only holds
  `{{ image }}`, filled from prefect.yaml's job variables).
- docker-compose.yaml: `image` values, which may instead be a required variable `${VAR:?message}`
  whose value comes from deploy/.env, and build args named *_IMAGE, which must have no value in the
  file (compose takes them from deploy/.env).
- Dockerfile: the `# syntax=` frontend, every FROM that is not an earlier stage, and every
  `ARG *_IMAGE` default; an ARG without default must be given with --build-arg (the build stops at
  its FROM otherwise).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import ConfigError

DEPLOY_DIR = Path(__file__).resolve().parent
PLACEHOLDER = "REPLACE_WITH_DIGEST"
#: name:tag@sha256:digest; the name may hold a registry host:port (the tag cannot hold '/' or ':').
PINNED = re.compile(r"^(?P<name>\S+?):(?P<tag>\w[\w.-]{0,127})@sha256:(?P<digest>[0-9a-f]{64})$")
PLACEHOLDER_REF = re.compile(rf"^(?P<name>\S+?):(?P<tag>\w[\w.-]{{0,127}})@sha256:{PLACEHOLDER}$")
REQUIRED_VARIABLE = re.compile(r"^\$\{(?P<var>[A-Za-z_]\w*):\?(?P<message>[^}]+)\}$")
SYNTAX_DIRECTIVE = re.compile(r"^#\s*syntax\s*=\s*(?P<ref>\S+)", re.IGNORECASE)
MANIFESTS = ("kuberay/*.yaml", "prefect.yaml")  # the files `pin` edits


@dataclass(frozen=True)
class ImageRef:
    """One image reference found in a deploy file.

    Args:
        path: the file, relative to the deploy directory.
        where: what holds the reference (a YAML key path, a Dockerfile instruction).
        ref: the reference as written.
        kind: "image" (must be pinned), "compose-image" (pinned or a required variable),
            "build-arg" (must be pinned, or required at build time).
    """

    path: str
    where: str
    ref: str
    kind: str = "image"


# ------------------------------------------------------------------------------------ finding
def _yaml_images(node: Any, where: str = "") -> list[tuple[str, str]]:
    """(key path, value) of every string `image` value in a parsed YAML document."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "image" and isinstance(value, str):
                found.append((path, value))
            else:
                found.extend(_yaml_images(value, path))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found.extend(_yaml_images(item, f"{where}[{i}]"))
    return found


def _manifest_images(deploy_dir: Path) -> list[ImageRef]:
    """Images of the Kubernetes and Prefect manifests (every YAML document of each file)."""
    refs = []
    for pattern in MANIFESTS:
        for path in sorted(deploy_dir.glob(pattern)):
            rel = str(path.relative_to(deploy_dir))
            for doc in yaml.safe_load_all(path.read_text()):
                refs += [ImageRef(rel, where, ref) for where, ref in _yaml_images(doc)]
    return refs


def _compose_images(deploy_dir: Path) -> list[ImageRef]:
    """Service images and *_IMAGE build args of docker-compose.yaml."""
    path = deploy_dir / "docker-compose.yaml"
    if not path.is_file():
        return []
    refs = []
    for name, service in (yaml.safe_load(path.read_text()).get("services") or {}).items():
        if "image" in service:
            refs.append(ImageRef(path.name, f"services.{name}.image", str(service["image"]), "compose-image"))
        args = (service.get("build") or {}).get("args") or {}
        if isinstance(args, list):  # ["NAME", "NAME=value"]
            args = dict(a.split("=", 1) if "=" in a else (a, None) for a in args)
        for arg, value in args.items():
            if arg.endswith("_IMAGE") and value is not None:
                where = f"services.{name}.build.args.{arg}"
                refs.append(ImageRef(path.name, where, str(value), "compose-image"))
    return refs


def dockerfile_lines(text: str) -> list[str]:
    """Instructions of a Dockerfile, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not current and not line):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return logical


def _from_ref(path: str, image: str, args: dict[str, str | None]) -> list[ImageRef]:
    """The reference a FROM pulls: the image itself, or the ARG it names."""
    arg = re.fullmatch(r"\$\{?(\w+)\}?", image)
    if not arg:
        return [ImageRef(path, f"FROM {image}", image)]
    name = arg.group(1)
    if name not in args:  # undeclared: FROM gets an empty name
        return [ImageRef(path, f"FROM {image}", image)]
    if args[name] is None:  # no default: given with --build-arg
        return [ImageRef(path, f"FROM {image}", image, "build-arg")]
    if name.endswith("_IMAGE"):  # its default is already checked at the ARG
        return []
    return [ImageRef(path, f"ARG {name}", args[name] or "")]


def _dockerfile_images(deploy_dir: Path) -> list[ImageRef]:
    """The frontend, ARG *_IMAGE defaults and FROM images of deploy/Dockerfile."""
    path = deploy_dir / "Dockerfile"
    if not path.is_file():
        return []
    text = path.read_text()
    refs = []
    first = text.splitlines()[0] if text else ""
    if match := SYNTAX_DIRECTIVE.match(first):
        refs.append(ImageRef(path.name, "# syntax=", match.group("ref")))
    args: dict[str, str | None] = {}
    stages: set[str] = set()
    for line in dockerfile_lines(text):
        instr, _, rest = line.partition(" ")
        words = rest.split()
        if instr.upper() == "ARG" and words:
            name, eq, default = words[0].partition("=")
            args[name] = default if eq else None
            if name.endswith("_IMAGE") and eq:
                refs.append(ImageRef(path.name, f"ARG {name}", default))
        elif instr.upper() == "FROM" and words:
            words = [w for w in words if not w.startswith("--")]
            image = words[0]
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2])
            if image in stages or image == "scratch":
                continue
            refs += _from_ref(path.name, image, args)
    return refs


def find_images(deploy_dir: Path = DEPLOY_DIR) -> list[ImageRef]:
    """Every image reference of the deploy directory.

    Args:
        deploy_dir: the deploy directory (deploy/ of the repository by default).

    Returns:
        The references in file order: manifests, compose, Dockerfile.
    """
    return _manifest_images(deploy_dir) + _compose_images(deploy_dir) + _dockerfile_images(deploy_dir)


# ------------------------------------------------------------------------------------ checking
def problem(ref: ImageRef, allow_placeholder: bool = False, dockerfile_text: str = "") -> str | None:
    """What is wrong with one reference, as one line naming the fix; None when it is pinned.

    Args:
        ref: the reference.
        allow_placeholder: accept `name:tag@sha256:REPLACE_WITH_DIGEST` (the repository's state
            before `pin`); refused when deploying.
        dockerfile_text: the Dockerfile, where a required build arg must be documented.

    Returns:
        The problem, or None.
    """
    at = f"{ref.path}: {ref.where}"
    if PINNED.match(ref.ref):
        return None
    if PLACEHOLDER_REF.match(ref.ref):
        if allow_placeholder:
            return None
        return (
            f"{at} = {ref.ref} still has the digest placeholder: push the image, then run "
            f"`python deploy/images.py pin {ref.ref.split('@')[0]}@sha256:<digest>`"
        )
    if ref.kind == "compose-image" and REQUIRED_VARIABLE.match(ref.ref):
        return None
    if ref.kind == "build-arg":
        name = ref.ref.strip("${}")
        if re.search(rf"--build-arg {name}=\S+?:\w[\w.-]*@sha256:", dockerfile_text):
            return None
        return f"{at}: document `--build-arg {name}=<name:tag>@sha256:<digest>` in the Dockerfile header"
    return (
        f"{at} = {ref.ref} is not pinned by digest: write it as <name:tag>@sha256:<64 hex> "
        "(`crane digest <name:tag>` prints the digest)"
    )


def check(deploy_dir: Path = DEPLOY_DIR, allow_placeholder: bool = False) -> tuple[int, list[str]]:
    """Check every image of the deploy directory.

    Args:
        deploy_dir: the deploy directory.
        allow_placeholder: accept the project image's digest placeholder.

    Returns:
        (number of references checked, one line per problem).
    """
    dockerfile = deploy_dir / "Dockerfile"
    text = dockerfile.read_text() if dockerfile.is_file() else ""
    refs = find_images(deploy_dir)
    problems = [p for r in refs if (p := problem(r, allow_placeholder, text)) is not None]
    return len(refs), problems


# ------------------------------------------------------------------------------------ pinning
def pin(pinned: str, deploy_dir: Path = DEPLOY_DIR) -> list[Path]:
    """Write `name:tag@sha256:<digest>` into the manifests that reference name:tag.

    Replaces `name:tag@sha256:REPLACE_WITH_DIGEST` and any older `name:tag@sha256:<digest>`, as
    text, so comments and layout stay as they are.

    Args:
        pinned: the image with its digest, e.g. from `crane digest`.
        deploy_dir: the deploy directory.

    Returns:
        The files changed.

    Raises:
        ConfigError: `pinned` is not name:tag@sha256:<64 hex>, or no manifest uses name:tag.
    """
    match = PINNED.match(pinned)
    if not match:
        raise ConfigError(
            f"{pinned!r} is not an image pinned by digest: pass <name:tag>@sha256:<64 hex> "
            "(`crane digest <name:tag>` prints the digest)"
        )
    name_tag = f"{match.group('name')}:{match.group('tag')}"
    old = re.compile(re.escape(name_tag) + rf"@sha256:(?:{PLACEHOLDER}|[0-9a-f]{{64}})(?![0-9a-zA-Z_])")
    changed, found = [], False
    for pattern in MANIFESTS:
        for path in sorted(deploy_dir.glob(pattern)):
            text = path.read_text()
            found = found or bool(old.search(text))
            new = old.sub(pinned, text)
            if new != text:  # already pinned to this digest: nothing to write
                path.write_text(new)
                changed.append(path)
    if not found:
        raise ConfigError(
            f"no manifest in {deploy_dir} references {name_tag}: check the image name and tag "
            "(the manifests use the tag of pyproject.toml's version)"
        )
    return changed


# ------------------------------------------------------------------------------------ CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python deploy/images.py", description=__doc__.split("\n")[0])
    parser.add_argument("--deploy-dir", type=Path, default=DEPLOY_DIR, help="default: this directory")
    sub = parser.add_subparsers(dest="command", required=True)
    check_cmd = sub.add_parser("check", help="exit 2 unless every image is pinned by digest")
    check_cmd.add_argument(
        "--allow-placeholder",
        action="store_true",
        help=f"accept name:tag@sha256:{PLACEHOLDER} (the repository's state; never when deploying)",
    )
    pin_cmd = sub.add_parser("pin", help="write an image's digest into the manifests")
    pin_cmd.add_argument("image", help="name:tag@sha256:<digest>")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; problems are printed one per line on stderr.

    Args:
        argv: the arguments (sys.argv[1:] by default).

    Returns:
        0 when every image is pinned (check) or the digest was written (pin), 2 otherwise.
    """
    args = _parser().parse_args(argv)
    if args.command == "pin":
        try:
            changed = pin(args.image, args.deploy_dir)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{args.image}: {len(changed)} file(s) updated")
        return 0
    count, problems = check(args.deploy_dir, args.allow_placeholder)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        return 2
    accepted = f" (or {PLACEHOLDER}, accepted by --allow-placeholder)" if args.allow_placeholder else ""
    print(f"{count} image references, all pinned by digest{accepted}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
