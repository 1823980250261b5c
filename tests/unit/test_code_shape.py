"""The shape of the product code, checked: complexity, import graph, stage contract, environment.

- no function in bakery_lib ranks worse than C in radon's cyclomatic complexity (its Python API);
- no import cycle between bakery_lib modules (the AST's imports, top-level and in functions, except
  those only for type checking), and no import inside a function without a comment saying why;
- every stage module has ``run`` and ``cleanup``, and ``stages.ORDER`` names each module once;
- no stage module imports another (what stages share lives in ``bakery_lib.ec2``, ``stages.base``...);
- below the CLI, no module reads ``os.environ`` (the settings object carries what the CLI read);
- the devstack (the instance runner, the Jenkins double, the stub chef-client...) ranks no worse
  than C either;
- no test (outside ``bench/``) uses ``threading.Timer`` or asserts on elapsed wall-clock time: tests
  wait on events (a line, a tag, a file) and inject a clock where time is the subject.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from radon.complexity import cc_rank, cc_visit

from bakery_lib import stages

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "bakery_lib"
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
# The devstack modules are held to radon C as well.
DEVSTACK_HELD = sorted((ROOT / "devstack").glob("*.py"))
TESTS = sorted(p for p in (ROOT / "tests").rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path) -> list[tuple[ast.stmt, bool]]:
    """(import statement, inside a function) for every runtime import of the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[ast.stmt, bool]] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append((child, in_function))
            walk(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    walk(tree, False)
    return found


def resolve(path: Path, node: ast.stmt) -> set[str]:
    """The bakery_lib modules an import statement loads."""
    known = {module_name(p) for p in SOURCES}
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module_name(path).split(".")
            base = base if is_package(path) else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = {prefix} | {f"{prefix}.{a.name}" for a in node.names}
    return {n for n in names if n in known}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        me = module_name(path)
        graph[me] = set()
        for node, _ in imports_of(path):
            graph[me] |= resolve(path, node) - {me}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle (as a path of modules) if the graph has one. A package importing its own submodules
    is not a cycle unless a submodule imports the package back."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == grey:
                return stack[stack.index(nxt):] + [nxt]
            if colour.get(nxt) == white:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = black
        return None

    for start in sorted(graph):
        if colour[start] == white:
            found = visit(start)
            if found:
                return found
    return None


def test_no_function_in_bakery_lib_is_worse_than_radon_c() -> None:
    worse = []
    for path in SOURCES + DEVSTACK_HELD:
        for block in cc_visit(path.read_text(encoding="utf-8")):
            rank = cc_rank(block.complexity)
            if rank > "C":
                worse.append(f"{path.relative_to(ROOT)}:{block.lineno} {block.fullname} {rank} ({block.complexity})")
    assert worse == [], "functions worse than radon C:\n" + "\n".join(worse)


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The check below must be able to fail.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_bakery_lib_modules() -> None:
    graph = import_graph()
    assert "bakery_lib.stages.preflight" in graph and graph["bakery_lib.cli"], "the graph was not read"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_every_import_inside_a_function_says_why() -> None:
    unexplained = []
    for path in SOURCES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for node, in_function in imports_of(path):
            if not in_function:
                continue
            same = lines[node.lineno - 1]
            # A run of imports shares the comment above its first line.
            first = node.lineno - 1
            while first > 0 and lines[first - 1].strip().startswith(("import ", "from ")):
                first -= 1
            before = lines[first - 1].strip() if first >= 1 else ""
            if not (before.startswith("#") or "#" in same):
                unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}: {same.strip()}")
    assert unexplained == [], "imports inside functions without a comment saying why:\n" + "\n".join(unexplained)


@pytest.mark.parametrize("name", stages.ORDER)
def test_every_stage_module_has_run_and_cleanup(name: str) -> None:
    module = stages.MODULES[name]
    assert callable(getattr(module, "run", None)), f"stage {name}: no run()"
    assert callable(getattr(module, "cleanup", None)), f"stage {name}: no cleanup(ctx, report)"
    assert (module.__doc__ or "").strip(), f"stage {name}: no module docstring"


def stage_imports(graph: dict[str, set[str]]) -> list[str]:
    """"stage -> stage" for every import of one stage module by another."""
    names = {f"bakery_lib.stages.{m.__name__.rsplit('.', 1)[-1]}" for m in stages.MODULES.values()}
    return sorted(f"{me} -> {other}" for me in names & set(graph) for other in graph[me] & names)


def test_the_stage_import_finder_finds_one() -> None:
    # The check below must be able to fail.
    graph = {"bakery_lib.stages.launch": {"bakery_lib.stages.preflight", "bakery_lib.stages.base"}}
    assert stage_imports(graph) == ["bakery_lib.stages.launch -> bakery_lib.stages.preflight"]


def test_no_stage_module_imports_another() -> None:
    crossings = stage_imports(import_graph())
    assert crossings == [], "stages importing other stages (move the shared helper to bakery_lib/ec2/ " \
                            "or stages/base.py):\n" + "\n".join(crossings)


def test_only_the_cli_reads_the_environment() -> None:
    readers = []
    for path in SOURCES:
        if module_name(path).startswith("bakery_lib.cli"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                readers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert readers == [], "modules below the CLI reading os.environ:\n" + "\n".join(readers)


# Names that hold a wall-clock reading or a difference of two: asserting on them is asserting on timing.
_CLOCKS = ("time", "monotonic", "perf_counter")
_ELAPSED_NAMES = re.compile(r"^(elapsed|took|waited)$|_elapsed$")


def _reads_clock(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and (
        (isinstance(n.func, ast.Attribute) and n.func.attr in _CLOCKS) or
        (isinstance(n.func, ast.Name) and n.func.id in _CLOCKS)) for n in ast.walk(node))


def timing_problems(source: str) -> list[tuple[int, str]]:
    """(line, what) for each ``threading.Timer`` and each assert comparing elapsed wall-clock time."""
    tree = ast.parse(source)
    timed: set[str] = set()  # names assigned from a clock reading (t0 = time.monotonic(); took = ... - t0)
    assigns = [n for n in ast.walk(tree) if isinstance(n, ast.Assign)]
    for _ in range(3):  # a few rounds: took = now - t0 after t0 = time.monotonic()
        for node in assigns:
            # A difference of readings (took = time.monotonic() - t0) is elapsed time; a value computed
            # by a call from a reading (report = prune(now=now)) is an injected clock, not a timing.
            diff = isinstance(node.value, ast.BinOp) and isinstance(node.value.op, ast.Sub)
            used = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)} if diff else set()
            if (isinstance(node.value, ast.Call) and _reads_clock(node.value) and not node.value.args) or \
                    (diff and (_reads_clock(node.value) or used & timed)):
                timed |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "Timer" and \
                isinstance(node.value, ast.Name) and node.value.id == "threading":
            found.append((node.lineno, "threading.Timer"))
        elif isinstance(node, ast.ImportFrom) and node.module == "threading" and \
                any(a.name == "Timer" for a in node.names):
            found.append((node.lineno, "from threading import Timer"))
        elif isinstance(node, ast.Assert):
            for cmp in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
                operands = [cmp.left, *cmp.comparators]
                names = {n.id for o in operands for n in ast.walk(o) if isinstance(n, ast.Name)}
                if any(_reads_clock(o) for o in operands) or names & timed or \
                        any(_ELAPSED_NAMES.search(name) for name in names):
                    found.append((node.lineno, f"assert on elapsed time: {ast.unparse(cmp)[:80]}"))
                    break
    return sorted(found)


def test_the_timing_rule_finds_timers_and_elapsed_asserts() -> None:
    # The rule below must be able to fail.
    src = ("import threading, time\nt0 = time.monotonic()\nthreading.Timer(1, print).start()\n"
           "assert time.monotonic() - t0 < 5\nelapsed = 3\nassert elapsed < 30\n"
           "took, out = 1.0, ''\nassert took < 2\nassert len(out) == 0\n")
    assert [line for line, _ in timing_problems(src)] == [3, 4, 6, 8]


def test_no_test_uses_timers_or_asserts_on_elapsed_time() -> None:
    found = []
    for path in TESTS:
        if path == Path(__file__):
            continue
        for line, what in timing_problems(path.read_text(encoding="utf-8")):
            found.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert found == [], "timing-dependent tests (wait on an event or inject a clock):\n" + "\n".join(found)
