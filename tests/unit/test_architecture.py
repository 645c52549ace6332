"""The shape of the code, enforced (docs/architecture.md): one package writes Redis, one module
knows the broker's layout (checked against KEDA's triggers here, against the installed kombu
in tests/integration/test_redis_layout.py), no import cycles, and the roles stay apart: the
shared core (common/) imports neither side, the render workers (workers/) never import the
control plane (scheduler/), and the control plane imports the workers only in the command
line, the composition root that launches each role. Bookkeeping's tasks live in
scheduler/bookkeeping/, none in workers/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from common import broker
from tests.support.paths import ROOT

PACKAGES = ("common", "scheduler", "workers")
STATE = "common.state"  # the store (a package); and how to reach Redis:
REDIS_CLIENT = "common.redis_client"


def modules() -> dict[str, ast.Module]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = ast.parse(path.read_text(), str(path))
    return out


def imports(tree: ast.Module) -> set[str]:
    """Project modules a module imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    # a submodule importing a sibling through its package (`from pkg import sibling`) is no
    # edge up to the package itself
    return {
        name: {m for m in imports(tree) if m in mods and m != name and not name.startswith(m + ".")}
        for name, tree in mods.items()
    }


def test_only_the_state_module_touches_the_redis_client():
    offenders = []
    for name, tree in modules().items():
        if name in (STATE, REDIS_CLIENT) or name.startswith(STATE + "."):
            continue
        for node in ast.walk(tree):
            raw = isinstance(node, ast.Attribute) and node.attr in ("r", "_r", "register_script")
            made = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("Redis", "StrictRedis", "Sentinel")
            )
            if raw or made:
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == [], "Redis reached outside common/state: " + ", ".join(offenders)


def test_no_import_cycles_and_imports_go_down(graph):
    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return [*path, nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for m in graph if (c := cycle_from(m))]
    assert cycles == [], f"import cycles: {cycles[:3]}"
    for name, deps in graph.items():
        if name.startswith("workers"):
            assert not {d for d in deps if d.startswith("scheduler")}, name
        if name.startswith("common"):
            assert not {d for d in deps if d.startswith(("scheduler", "workers"))}, name
        if name.startswith("scheduler") and not name.startswith("scheduler.cli"):
            assert not {d for d in deps if d.startswith("workers")}, name


def test_the_control_plane_reaches_the_workers_only_from_the_command_line(graph):
    """Everything the scheduler image runs but the command line (bookkeeping, beat, the web
    front, the metrics exporter, the probes) reaches no module of workers/, directly or not."""
    roots = [m for m in graph if m.startswith("scheduler") and not m.startswith("scheduler.cli")]
    assert {"scheduler.bookkeeping.tasks", "scheduler.beat", "scheduler.web.app"} <= set(roots)
    reached = reach(graph, roots)
    assert not {m for m in reached if m.startswith("workers")}, sorted(reached)
    starts = reach(graph, ["common.celery_app"])  # beat's and Flower's app
    assert not {m for m in starts if m.startswith(("workers", "scheduler"))}, sorted(starts)


def test_no_bookkeeping_task_in_the_workers():
    """Tasks by name, wherever they are defined: the render task in workers/, the rest in
    scheduler/bookkeeping/."""
    from common import queue

    where = {}
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "attr", "") == "task":
                    task = next(k.value.id for k in deco.keywords if k.arg == "name")
                    where[getattr(queue, task)] = name
    assert where == {
        queue.RENDER_TASK: "workers.tasks",
        queue.FINALIZE_TASK: "scheduler.bookkeeping.tasks",
        queue.NOTIFY_TASK: "scheduler.bookkeeping.tasks",
        queue.FAILED_TASK: "scheduler.bookkeeping.tasks",
        queue.REVIEW_TASK: "scheduler.bookkeeping.tasks",
    }


def reach(graph, roots) -> set[str]:
    """Every module the roots import, directly or not."""
    reached, todo = set(), list(roots)
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in reached:
                reached.add(dep)
                todo.append(dep)
    return reached


def test_a_plan_followed_into_submit_reaches_only_common(graph):
    reached = reach(graph, ["scheduler.submit"])
    assert all(m.startswith("common") for m in reached), sorted(reached)
    assert {"common.state", "common.dispatch", "common.broker"} <= reached


def test_one_place_sends_finalize():
    senders = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("send_task", "apply_async", "delay", "signature")
                and any(isinstance(a, ast.Name) and a.id == "FINALIZE_TASK" for a in node.args)
            ):
                senders.append(name)
    assert senders == ["common.dispatch"], senders


def test_keda_scales_on_the_lists_kombu_writes():
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "keda.yaml").read_text()))
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    lists = [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]]
    assert lists == broker.queue_keys("render")


def test_lua_scripts_ship_with_the_package():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"lua/*.lua"' in text
    assert all(p.read_text().startswith("--") for p in (ROOT / "common" / "lua").glob("*.lua"))


def test_docs_draw_the_module_graph():
    """docs/architecture.md names the modules it draws, and each exists."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for module in (
        "common/state/",
        "common/dispatch.py",
        "common/broker.py",
        "scheduler/bookkeeping/",
        "scheduler/intake.py",
        "workers/engine/",
        "scheduler/web/routes/reviews.py",
    ):
        assert module in doc, module
        assert (ROOT / module).exists(), module
    assert Path(ROOT / "common" / "lua").is_dir()


def test_the_web_front_reaches_neither_torch_nor_the_workers(graph):
    """scheduler/web (`stylebatch serve`) runs from the scheduler image: it never imports
    torch or workers/, and reads and writes Redis only through JobStore (checked above)."""
    import subprocess
    import sys

    web = [m for m in graph if m.startswith("scheduler.web")]
    assert {"scheduler.web.app", "scheduler.web.routes.jobs", "scheduler.web.pages"} <= set(web)
    reached = reach(graph, web)
    assert not {m for m in reached if m.startswith("workers")}, sorted(reached)
    probe = "import sys, scheduler.web.app, scheduler.cli; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "False", done.stderr
