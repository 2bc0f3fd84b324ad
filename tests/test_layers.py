"""The layer order of simcli, checked on every module's imports (README, "Layers").

From the top down:
    cli                 typer and rich; composes everything below; the only layer that may exit the process
    config              pydantic run specs; imports only the leaves
    engine packages     torch; each imports only the engine packages listed for it below, config and leaves
    leaves              errors, runtime, world, rundir, assets, store (and the package root): usable from every
                        layer; they import only each other

Every import counts, also those inside functions. The engine packages form a stack without cycles, and no
two modules import each other, directly or round a loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "simcli"

LEAVES = ("simcli", "simcli.errors", "simcli.runtime", "simcli.world", "simcli.peers", "simcli.rundir", "simcli.assets", "simcli.store")
# Each engine package and the engine packages it may import (nets at the bottom).
ENGINE = {
    "nets": set(),
    "data": set(),
    "teachers": {"nets", "data"},
    "sampling": {"nets", "data", "teachers"},
    "distill": {"nets", "data", "teachers", "sampling"},
    "eval": {"nets", "data", "teachers", "sampling"},
    "compare": set(),
    "export": {"nets", "data", "teachers", "sampling"},
}
UI_LIBRARIES = ("typer", "rich", "click")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = ROOT.parent / name.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(module: str, source: str, is_package: bool = False, known: frozenset[str] = frozenset()) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the source, wherever it stands.

    `from a.b import c` counts as importing a.b, and a.b.c too when that is a module (on disk or in `known`).
    """
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, target))
            # `from simcli.x import y` may name the submodule simcli.x.y
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names if f"{target}.{a.name}" in known or _is_module(f"{target}.{a.name}")]
    return found


def _layer(module: str) -> str:
    """'cli', 'config', 'leaf', or the engine package name."""
    if module == "simcli.__main__" or module.startswith("simcli.cli"):
        return "cli"
    if module.startswith("simcli.config"):
        return "config"
    if module == "simcli" or any(module == leaf or module.startswith(leaf + ".") for leaf in LEAVES[1:]):
        return "leaf"
    package = module.split(".")[1]
    if package not in ENGINE:
        raise AssertionError(f"{module} is in no layer: add its package to ENGINE in tests/test_layers.py")
    return package


Source = tuple[str, str, bool]  # (file shown in messages, text, is a package __init__)


def _sources() -> dict[str, Source]:
    return {
        _module_name(p): (str(p.relative_to(ROOT.parent)), p.read_text(), p.name == "__init__.py")
        for p in sorted(ROOT.rglob("*.py"))
    }


def layer_violations(sources: dict[str, Source]) -> list[str]:
    """Every import that runs against the layer order, as 'file:line imports target (why)'."""
    out = []
    for module, (shown, text, is_package) in sources.items():
        mine = _layer(module)
        for line, target in _imports(module, text, is_package):
            where = f"{shown}:{line} imports {target}"
            top = target.split(".")[0]
            if top in UI_LIBRARIES and mine != "cli":
                out.append(f"{where} (only the CLI may use {top})")
            if top != "simcli" or target == "simcli":
                continue
            theirs = _layer(target)
            if mine == "cli" or theirs == "leaf":
                continue
            if mine == "leaf":
                out.append(f"{where} (a leaf imports only leaves)")
            elif mine == "config":
                if theirs != "config":
                    out.append(f"{where} (config imports only config and the leaves)")
            elif theirs == "cli":
                out.append(f"{where} (the engine never imports the CLI)")
            elif theirs not in ("config", mine) and theirs not in ENGINE[mine]:
                out.append(f"{where} ({mine} may import " + (f"only {sorted(ENGINE[mine])}" if ENGINE[mine] else "no other engine package") + ")")
    return out


def exit_calls(sources: dict[str, Source]) -> list[str]:
    """sys.exit / os._exit / exit() / raise SystemExit anywhere below the CLI."""
    out = []
    for module, (shown, text, _) in sources.items():
        if _layer(module) == "cli":
            continue
        for node in ast.walk(ast.parse(text)):
            name = ast.unparse(node.func) if isinstance(node, ast.Call) else ""
            raised = isinstance(node, ast.Raise) and node.exc is not None and "SystemExit" in ast.unparse(node.exc)
            if name in ("sys.exit", "os._exit", "exit", "quit") or raised:
                out.append(f"{shown}:{node.lineno} ({name or 'raise SystemExit'})")
    return out


def module_cycles(sources: dict[str, Source]) -> list[list[str]]:
    """Loops in the module import graph (a package's __init__ counts as a module of its own)."""
    graph = {
        m: sorted({t for _, t in _imports(m, text, is_pkg, frozenset(sources)) if t in sources and t != m})
        for m, (_, text, is_pkg) in sources.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    return cycles


def test_engine_packages_form_a_stack():
    """The allowed-imports table itself has no cycle, and nets sits at the bottom."""
    assert ENGINE["nets"] == set()
    order: list[str] = []
    remaining = dict(ENGINE)
    while remaining:
        ready = [p for p, deps in remaining.items() if deps <= set(order)]
        assert ready, f"engine packages import each other in a loop: {sorted(remaining)}"
        order += sorted(ready)
        for p in ready:
            remaining.pop(p)


def test_every_import_follows_the_layers():
    violations = layer_violations(_sources())
    assert not violations, "imports against the layer order:\n" + "\n".join(violations)


def test_nothing_below_the_cli_exits_the_process():
    calls = exit_calls(_sources())
    assert not calls, "process exits below the CLI:\n" + "\n".join(calls)


def test_no_module_import_cycles():
    cycles = module_cycles(_sources())
    assert not cycles, "module import loops:\n" + "\n".join(" -> ".join(c) for c in cycles)


CAPABILITIES = ("text_dim", "label_dim", "augment_dim", "map_augment", "guidance_scale", "set_guidance_scale",
                "set_null_condition", "set_activation_checkpointing", "supports_activation_checkpointing", "use_fp16",
                "set_dropout", "supports_dropout", "sample_shape", "conditioning")
"""What a denoiser declares on its interface (simcli.nets.denoiser); asked directly, never probed."""


def capability_probes(sources: dict[str, Source]) -> list[str]:
    """hasattr/getattr with a literal denoiser capability name anywhere outside nets/ (where the interface lives)."""
    out = []
    for module, (shown, text, _) in sources.items():
        if module.startswith("simcli.nets"):
            continue
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")):
                continue
            names = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            if names and names[0] in CAPABILITIES:
                out.append(f"{shown}:{node.lineno} {node.func.id}(..., {names[0]!r})")
    return out


def test_denoiser_capabilities_are_asked_not_probed():
    probes = capability_probes(_sources())
    assert not probes, "capability probes (ask Denoiser.conditioning and its typed switches instead):\n" + "\n".join(probes)


def test_the_probe_checker_catches_planted_probes():
    planted = {"simcli.distill.fake": ("p.py", "def f(n):\n    return getattr(n, 'text_dim', 0) or hasattr(n, 'set_null_condition')\n", False)}
    assert capability_probes(planted) == ["p.py:2 getattr(..., 'text_dim')", "p.py:2 hasattr(..., 'set_null_condition')"]


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("simcli.nets.fake", "def f():\n    from simcli.teachers.registry import load_teacher\n", "nets may import no other"),
        ("simcli.distill.fake", "from simcli.eval import stats\n", "distill may import only"),
        ("simcli.config.fake", "import simcli.nets.layers\n", "config imports only"),
        ("simcli.rundir.fake", "import rich.table\n", "only the CLI may use rich"),
        ("simcli.store.fake", "from simcli.teachers.edm_catalog import EDM_TEACHERS\n", "a leaf imports only leaves"),
        ("simcli.sampling.fake", "from ..cli import app\n", "the engine never imports the CLI"),
    ],
)
def test_the_checker_catches_planted_imports(module, source, expected):
    """The checker is not vacuous: an import planted against the order is reported."""
    violations = layer_violations({module: ("planted.py", source, False)})
    assert any(expected in v for v in violations), violations


def test_the_checker_catches_exits_and_cycles():
    planted = {
        "simcli.eval.a": ("a.py", "import sys\nfrom simcli.eval import b\nsys.exit(3)\n", False),
        "simcli.eval.b": ("b.py", "def f():\n    import simcli.eval.a\n", False),
    }
    assert exit_calls(planted) == ["a.py:3 (sys.exit)"]
    assert module_cycles(planted) == [["simcli.eval.a", "simcli.eval.b", "simcli.eval.a"]]
