"""The repository's shape: imports point down the layers with no cycle, every cited document exists in the
repository, no machine's absolute path is written anywhere, and source files stay readable in one sitting."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "models", "datamodules", "analysis", "experiments")
# What each package may import from the suite (docs/design.md, "Layers").
ALLOWED = {
    "common": {"common"},
    "models": {"common", "models"},
    "datamodules": {"common", "datamodules"},
    "analysis": {"common", "models", "datamodules", "analysis"},
    "experiments": set(PACKAGES),
}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".toml", ".sh", ".txt", ".ipynb", ".cfg"}
SYSTEM_PREFIXES = ("/usr/", "/etc/", "/dev/", "/proc/", "/sys/", "/bin/")  # installed packages, not a machine's
GENERATED_DOCS = {"report.md"}  # written by the suite into a results folder
LONG_FILES = {"models/scan.py"}  # the scan kernel


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return [ROOT / line for line in out.stdout.splitlines() if (ROOT / line).is_file()]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def suite_imports(path: Path, modules: set[str] = frozenset()) -> set[str]:
    """Suite modules `path` imports, anywhere in it (an import under `if TYPE_CHECKING:` or inside a function counts:
    a cycle through one is a cycle of the design); `from package import module` counts as importing that module when
    `modules` knows it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            ]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in tracked_files() if p.suffix == ".py" and p.parts[len(ROOT.parts)] in PACKAGES}


def test_imports_point_down_the_layers():
    """models/ and datamodules/ import neither Lightning-side code nor each other; analysis/ never imports
    experiments/; common/ imports nothing of the suite."""
    wrong = [
        f"{name} imports {imported}"
        for name, path in package_modules().items()
        for imported in suite_imports(path)
        if imported.split(".")[0] not in ALLOWED[name.split(".")[0]]
    ]
    assert not wrong, wrong


def test_no_import_cycle():
    """The module graph of the suite (every import, annotations' included) has no cycle."""
    modules = package_modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: {r for i in suite_imports(p, set(modules)) if (r := resolve(i)) and r != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail(f"import cycle: {' -> '.join([*path[path.index(nxt) :], nxt])}")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def text_files() -> list[Path]:
    return [p for p in tracked_files() if p.suffix in TEXT_SUFFIXES]


def test_every_cited_document_is_in_the_repository():
    """A `.md` file named anywhere (code, --help, docs, notebooks) exists in the repository, relative to its root
    or to the citing file; only the report a comparison writes is exempt."""
    missing = []
    for path in text_files():
        for ref in re.findall(r"[\w./-]*\w\.md\b", path.read_text(errors="replace")):
            if ref.split("/")[-1] in GENERATED_DOCS or ref.startswith(("http", "//")):
                continue
            if not ((ROOT / ref).is_file() or (path.parent / ref).is_file()):
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
    assert not missing, missing


def test_no_absolute_path_of_a_machine():
    """No file names an absolute path outside the system's install locations (/usr, /etc, ...)."""
    pattern = re.compile(r"(?<![\w:/.~$<>-])(/[A-Za-z][\w.-]*(?:/[\w.+-]+)+)")
    found = [
        f"{path.relative_to(ROOT)}: {match}"
        for path in text_files()
        for match in pattern.findall(path.read_text(errors="replace"))
        if not match.startswith(SYSTEM_PREFIXES)
    ]
    assert not found, found


def test_source_files_stay_short():
    """No source file of the suite is over 400 lines, except the scan kernel."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in package_modules().values()
        if (n := len(p.read_text().splitlines())) > 400 and str(p.relative_to(ROOT)) not in LONG_FILES
    }
    assert not long, long
