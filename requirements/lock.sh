#!/usr/bin/env bash
# Regenerates the lock files in requirements/ from pyproject.toml: every transitive dependency
# pinned, each with the sha256 hashes of the files PyPI serves, for CPython 3.11 on linux x86_64.
#
# Why: a plain `pip install '.[worker,test]'` takes whatever was newest that day, so CI, the
# images and a developer's venv could each run a different kombu, celery or torch than the one
# the tests passed with (the reconciler reads kombu's own Redis structures). The locks pin what
# was tested; .ci/run installs ci.lock with --require-hashes, the scheduler image
# scheduler.lock, the GPU worker image worker.lock. tests/unit/test_lock.py checks that they agree
# with pyproject.toml and with each other, and that the running environment is the locked one.
#
# Run it after changing dependencies in pyproject.toml, then commit the three locks. Pins already
# in ci.lock are kept where they still satisfy pyproject.toml (pip-compile prefers the pins in its
# output file); pass pip-compile options to move some on, for ci.lock first and so for all three:
#   requirements/lock.sh                    # only what pyproject.toml's changes need
#   requirements/lock.sh -P kombu           # kombu (and what it needs) to the newest allowed
#   requirements/lock.sh --upgrade          # everything to the newest allowed
# ci.lock (base + worker + test) is resolved first; worker.lock (base + worker) and
# scheduler.lock (base only) are resolved with ci.lock as constraints, so a package shared by
# the locks has one version in all of them. Each also pins the build backend (setuptools, from
# requirements/platform.in), so the project installs from the lock with --no-build-isolation.
#
# pip-tools runs in a venv of its own outside the repository ($LOCK_TOOLS_VENV), never in .venv,
# and against PyPI only: machine-wide pip settings (find-links, local mirrors, constraints) are
# ignored, so the hashes are PyPI's and not those of some local copy.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
"$python" - <<'PY'
import platform, sys
if sys.version_info[:2] != (3, 11) or sys.platform != "linux" or platform.machine() != "x86_64":
    sys.exit(f"lock.sh resolves for the running interpreter: needs CPython 3.11 on linux "
             f"x86_64, not {platform.python_version()} on {sys.platform} {platform.machine()}")
PY

export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT PIP_REQUIRE_HASHES
export CUSTOM_COMPILE_COMMAND="requirements/lock.sh"

tools=${LOCK_TOOLS_VENV:-/tmp/stylebatch-lock-tools}
if [ ! -x "$tools/bin/pip-compile" ]; then
  "$python" -m venv "$tools"
  "$tools/bin/pip" install -q 'pip-tools==7.6.2'
fi

compile() {
  "$tools/bin/pip-compile" --quiet --generate-hashes --strip-extras --allow-unsafe \
    --no-emit-index-url --no-emit-find-links \
    --index-url https://pypi.org/simple "$@" pyproject.toml requirements/platform.in
}
compile --extra worker --extra test --output-file requirements/ci.lock "$@"
compile --extra worker --constraint requirements/ci.lock --output-file requirements/worker.lock
compile --constraint requirements/ci.lock --output-file requirements/scheduler.lock
