"""The lock files in requirements/ (made by requirements/lock.sh): they pin every dependency that
pyproject.toml declares, with hashes, agree with each other, and are what this environment runs.

No network: only the files in the repository and the installed distributions' metadata are read.
"""

import re
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.paths import ROOT

REQUIREMENTS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# What each lock is installed by, and which of pyproject.toml's groups it must cover.
LOCKS = {
    "scheduler": ("base",),
    "worker": ("base", "worker"),
    "ci": ("base", "worker", "test"),
}
DOCKERFILES = {
    "scheduler": ROOT / "deploy" / "Dockerfile.scheduler",
    "worker": ROOT / "deploy" / "Dockerfile.worker",
}
# The fleet's correctness depends on these being exactly the tested versions: the reconciler
# reads kombu's own Redis structures, the storage layer botocore's retries and errors.
FLEET_CRITICAL = [
    "kombu",
    "celery",
    "amqp",
    "vine",
    "billiard",
    "redis",
    "boto3",
    "botocore",
    "s3transfer",
    "pydantic",
    "pydantic-core",
    "torch",
    "torchvision",
]
# Linux x86_64, CPython 3.11: the platform the locks are made for (markers are evaluated so).
TARGET = {
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})\b")


def parse_lock(name: str) -> dict[str, tuple[Version, frozenset[str]]]:
    """{canonical name: (version, sha256 hashes)} of a lock; every requirement must be a pin."""
    pins: dict[str, tuple[Version, frozenset[str]]] = {}
    current = None
    for raw in (REQUIREMENTS / f"{name}.lock").read_text().splitlines():
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():  # a continuation: the current pin's hashes
            assert current is not None, f"{name}.lock: {raw!r} belongs to no pin"
            version, hashes = pins[current]
            found = HASH.findall(line)
            assert found, f"{name}.lock: unexpected continuation {raw!r}"
            pins[current] = (version, hashes | frozenset(found))
            continue
        match = PIN.match(line)
        assert match, f"{name}.lock: {raw!r} is not a name==version pin"
        current = canonicalize_name(match[1])
        assert current not in pins, f"{name}.lock pins {current} twice"
        pins[current] = (Version(match[2]), frozenset(HASH.findall(line)))
    return pins


LOCKED = {name: parse_lock(name) for name in LOCKS}


def declared(group: str) -> list[Requirement]:
    if group == "base":
        specs = PYPROJECT["project"]["dependencies"]
    else:
        specs = PYPROJECT["project"]["optional-dependencies"][group]
    return [Requirement(spec) for spec in specs]


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_has_a_sha256_hash(lock):
    pins = LOCKED[lock]
    assert pins, f"{lock}.lock pins nothing"
    unhashed = sorted(name for name, (_, hashes) in pins.items() if not hashes)
    assert not unhashed, f"{lock}.lock: pins without --hash=sha256: {unhashed}"


@pytest.mark.parametrize("lock", LOCKS)
def test_locks_are_made_for_python_3_11_by_lock_sh(lock):
    header = (REQUIREMENTS / f"{lock}.lock").read_text()[:400]
    assert "with Python 3.11" in header
    assert "requirements/lock.sh" in header


@pytest.mark.parametrize(
    ("lock", "group", "spec"),
    [
        (lock, group, str(req))
        for lock, groups in LOCKS.items()
        for group in groups
        for req in declared(group)
    ],
)
def test_declared_dependency_is_pinned_within_its_specifier(lock, group, spec):
    req = Requirement(spec)
    if req.marker is not None and not req.marker.evaluate(TARGET):
        pytest.skip(f"{spec}: not for linux x86_64 CPython 3.11")
    name = canonicalize_name(req.name)
    assert name in LOCKED[lock], f"{lock}.lock lacks {spec} ({group} dependency)"
    version, _ = LOCKED[lock][name]
    assert req.specifier.contains(version, prereleases=True), (
        f"{lock}.lock pins {name}=={version}, outside pyproject.toml's {spec}"
    )


@pytest.mark.parametrize("lock", LOCKS)
def test_build_backend_is_pinned(lock):
    """The project itself installs from the lock with --no-build-isolation: its backend is there."""
    for spec in PYPROJECT["build-system"]["requires"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in LOCKED[lock], f"{lock}.lock lacks the build requirement {spec}"
        assert req.specifier.contains(LOCKED[lock][name][0], prereleases=True)


def test_smaller_locks_are_subsets_with_the_same_versions_and_hashes():
    scheduler, worker, ci = LOCKED["scheduler"], LOCKED["worker"], LOCKED["ci"]
    assert set(scheduler) <= set(worker) <= set(ci)
    for small_name, small in (("scheduler", scheduler), ("worker", worker)):
        differ = {
            name: (str(pin[0]), str(ci[name][0]))
            for name, pin in small.items()
            if pin[0] != ci[name][0] or pin[1] != ci[name][1]
        }
        assert not differ, f"{small_name}.lock and ci.lock differ (version or hashes): {differ}"


def test_scheduler_lock_has_no_torch():
    heavy = {"torch", "torchvision", "triton", "numpy"}
    nvidia = {name for name in LOCKED["scheduler"] if name.startswith(("nvidia-", "cuda-"))}
    assert not (heavy & set(LOCKED["scheduler"])) and not nvidia


@pytest.mark.parametrize("name", FLEET_CRITICAL)
def test_the_running_environment_has_the_locked_version(name):
    """Run after installing from ci.lock (as .ci/run does): the tests must exercise the pins."""
    locked, _ = LOCKED["ci"][canonicalize_name(name)]
    try:
        installed = Version(metadata.version(name))
    except metadata.PackageNotFoundError:
        pytest.fail(f"{name} is not installed; install with pip install -r requirements/ci.lock")
    assert installed == locked, (
        f"{name} {installed} is installed but ci.lock pins {locked}: "
        "reinstall with pip install --require-hashes -r requirements/ci.lock"
    )


def test_the_running_environment_matches_the_whole_ci_lock():
    differ = {}
    for name, (locked, _) in LOCKED["ci"].items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            differ[name] = ("missing", str(locked))
            continue
        if installed != locked:
            differ[name] = (str(installed), str(locked))
    assert not differ, f"installed vs ci.lock: {differ}"


def test_ci_installs_from_the_lock_with_hashes():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q --require-hashes -r requirements/ci.lock" in ci
    assert re.search(r"pip install -q --no-deps .*-e \.", ci)


@pytest.mark.parametrize("image", DOCKERFILES)
def test_dockerfile_installs_from_its_lock_with_hashes(image):
    text = DOCKERFILES[image].read_text()
    assert "--require-hashes" in text, f"{DOCKERFILES[image].name} installs without hashes"
    assert f"requirements/{image}.lock" in text, (
        f"{DOCKERFILES[image].name} does not install requirements/{image}.lock"
    )
    others = [lock for lock in LOCKS if lock != image and f"requirements/{lock}.lock" in text]
    assert not others, f"{DOCKERFILES[image].name} uses another image's lock: {others}"
