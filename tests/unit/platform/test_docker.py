"""The cluster images stay in step with pyproject.toml: every dependency is pinned in
docker/constraints.txt at a version pyproject allows, torch is the same everywhere, and the images run as
a non-root user. (hadolint lints the Dockerfiles in `make lint`.)"""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


def pins() -> dict[str, Requirement]:
    lines = (ROOT / "docker" / "constraints.txt").read_text().splitlines()
    reqs = [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]
    return {canonicalize_name(r.name): r for r in reqs}


IMAGE_EXTRAS = ("platform", "sim", "lm", "vllm")  # what the images install (platform pulls in sim)


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for e in IMAGE_EXTRAS for d in project["optional-dependencies"][e]]
    return [r for r in map(Requirement, deps) if canonicalize_name(r.name) != "fleetrl"]  # not fleetrl[sim]


def test_every_dependency_is_pinned_at_a_version_pyproject_allows():
    pinned = pins()
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is in pyproject.toml but not pinned in docker/constraints.txt"
        (spec,) = pinned[name].specifier
        assert spec.operator == "==", f"{req.name}: constraints.txt must pin an exact version, has {spec}"
        assert req.specifier.contains(spec.version), f"{req.name}=={spec.version} violates pyproject's {req}"


def test_nothing_is_pinned_that_pyproject_does_not_use():
    used = {canonicalize_name(r.name) for r in project_requirements()}
    assert set(pins()) <= used, f"stale pins: {sorted(set(pins()) - used)}"


def test_torch_is_the_same_build_in_makefile_images_and_constraints():
    (spec,) = pins()["torch"].specifier
    makefile = re.search(r"TORCH_SPEC \?= torch==(\S+)", (ROOT / "Makefile").read_text()).group(1)
    assert makefile == spec.version
    for dockerfile in DOCKERFILES:
        for found in re.findall(r"torch==(\S+)", dockerfile.read_text()):
            assert found == spec.version, f"{dockerfile.name} installs torch {found}, constraints say {spec}"


def test_images_install_with_the_constraints_and_run_as_a_non_root_user():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.cuda"}
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert "-c constraints.txt" in text, f"{dockerfile.name} installs without the pinned versions"
        extras = re.search(r'-c constraints.txt "\.\[([a-z,]+)\]"', text)
        assert extras and {"platform", "lm"} <= set(extras.group(1).split(",")), (
            f"{dockerfile.name}: no platform"
        )
        final_stage = text.rsplit("\nFROM ", 1)[1]
        users = re.findall(r"^USER (\S+)", final_stage, flags=re.M)
        assert users and users[-1].split(":")[0] not in ("0", "root"), f"{dockerfile.name} runs as root"
    assert ",vllm]" in (ROOT / "docker" / "Dockerfile.cuda").read_text()
