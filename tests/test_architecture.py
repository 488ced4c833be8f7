"""The structure docs/architecture.md describes, checked on the source itself.

``lint-imports`` (.importlinter, run in .ci/run) checks the layers and who may
import what.  Here: what it cannot see (attribute access to another object's
private names, private names imported from another module), that the import
graph has no cycle, and the size limits the architecture document states.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The source trees: smsroute/ (whose providers/ is a symlink, not followed) and providers/.
SOURCES = (ROOT / "smsroute", ROOT / "providers")

#: Private-looking names that are public API of the standard library or a dependency:
#: named tuples' methods carry an underscore so as not to clash with field names.
PUBLIC_UNDERSCORED = frozenset({"_asdict", "_replace", "_fields", "_make"})
#: (file, expression) pairs allowed to reach into a third party's private members, each
#: with its reason.
ALLOWED = {
    # aiohttp's TCPSite gives no public access to the port a port-0 site was bound to.
    ("smsroute/testing/fake.py", "site._server"),
}
#: Files over 600 lines, each one idea (see docs/architecture.md, "Sizes").
LONG_FILES = {
    "smsroute/yamlsource.py",
    "smsroute/cli.py",
    "smsroute/configload.py",
    "smsroute/dispatch.py",
    "smsroute/guards.py",
    "smsroute/instrument/prometheus.py",
    "smsroute/outbox/worker.py",
    "smsroute/outbox/sqlite.py",
    "smsroute/outbox/redis.py",
    "providers/base.py",
    "providers/http.py",
    "providers/vonage.py",
}


def sources() -> list[Path]:
    found: list[Path] = []
    for top in SOURCES:
        for path in sorted(top.rglob("*.py")):  # rglob does not follow the providers symlink
            if "__pycache__" not in path.parts:
                found.append(path)
    return found


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path) -> list[str]:
    """``x._name`` where x is not ``self``, ``cls`` or ``super()``, and ``from m import _name``."""
    rel = path.relative_to(ROOT).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), rel)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if (
                isinstance(owner, ast.Call)
                and isinstance(owner.func, ast.Name)
                and owner.func.id == "super"
            ):
                continue
            if node.attr in PUBLIC_UNDERSCORED:
                continue
            text = ast.unparse(node)
            if (rel, text) not in ALLOWED:
                found.append(f"{rel}:{node.lineno}: {text}")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if private(alias.name):
                    found.append(f"{rel}:{node.lineno}: from {node.module} import {alias.name}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    files = sources()
    assert len(files) > 50, f"found only {len(files)} source files under {SOURCES}"
    uses = [use for path in files for use in private_uses(path)]
    assert not uses, (
        "private names used across modules (give the part a public method, or add the "
        "name to ALLOWED with its reason):\n" + "\n".join(uses)
    )


def test_the_private_name_check_sees_what_it_must() -> None:
    probe = ROOT / "smsroute" / "_probe_for_test_architecture.py"
    probe.write_text(
        "from smsroute.router import _hidden\n"
        "def f(router, other):\n"
        "    self = other\n"
        "    return router._runtime, self._ok, super()._fine, other.__dict__, x._asdict()\n",
        encoding="utf-8",
    )
    try:
        uses = private_uses(probe)
    finally:
        probe.unlink()
    assert [u.split(": ", 1)[1] for u in uses] == [
        "from smsroute.router import _hidden",
        "router._runtime",
    ]


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                child = edges[node][i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def test_the_import_graph_of_smsroute_has_no_cycle() -> None:
    # Imports under `if TYPE_CHECKING:` and inside functions count: each is a dependency.
    graph = grimp.build_graph("smsroute", include_external_packages=False)
    assert "smsroute.router" in graph.modules
    assert not cycles(graph), "import cycles in smsroute: " + "; ".join(
        " <-> ".join(c) for c in cycles(graph)
    )


def test_the_config_model_depends_on_neither_the_loader_nor_the_adapters() -> None:
    # The adapters import ProviderConfig from smsroute.config; the loader asks the
    # adapters which options they take: types below the adapters, loader above them.
    graph = grimp.build_graph("smsroute", include_external_packages=False)
    for above in ("smsroute.configload", "smsroute.configcheck", "smsroute.providers"):
        chain = graph.find_shortest_chain(importer="smsroute.config", imported=above)
        assert chain is None, f"smsroute.config reaches {above}: {' -> '.join(chain)}"
    assert graph.find_shortest_chain(importer="smsroute.configload", imported="smsroute.providers")


def test_the_loader_is_still_importable_from_smsroute_config() -> None:
    # Users' code and old docs say `from smsroute.config import load_config`.
    import smsroute
    import smsroute.config
    import smsroute.configload
    import smsroute.errors
    from smsroute.config import load_config, parse_config

    assert load_config is smsroute.configload.load_config is smsroute.load_config
    assert parse_config is smsroute.configload.parse_config is smsroute.parse_config
    star: dict[str, object] = {}
    exec("from smsroute.config import *", star)
    assert star["parse_config"] is parse_config
    assert star["Config"] is smsroute.Config
    assert smsroute.config.ConfigError is smsroute.errors.ConfigError
    with pytest.raises(
        AttributeError, match=r"^module 'smsroute\.config' has no attribute 'nope'$"
    ):
        smsroute.config.nope  # noqa: B018


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")]:
        graph.add_import(importer=a, imported=b)
    assert cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_router_is_a_small_facade() -> None:
    tree = ast.parse((ROOT / "smsroute" / "router.py").read_text(encoding="utf-8"))
    (router,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Router"]
    assert router.end_lineno is not None
    lines = router.end_lineno - router.lineno + 1
    assert lines <= 300, f"Router is {lines} lines: move a job into one of its parts"


def test_no_source_file_is_long_unless_documented_as_one_idea() -> None:
    long = {
        path.relative_to(ROOT).as_posix()
        for path in sources()
        if len(path.read_text(encoding="utf-8").splitlines()) > 600
    }
    assert long <= LONG_FILES, (
        f"over 600 lines: {sorted(long - LONG_FILES)}: split them, or say in "
        "docs/architecture.md (Sizes) why each is one idea and add it to LONG_FILES"
    )
    documented = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in documented for name in LONG_FILES)
