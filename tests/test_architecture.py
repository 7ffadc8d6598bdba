"""The code's shape: no import circles inside the library, nothing of the library importing a
script, the benchmarks, the tests or torch, and no paths outside the repository."""

import ast
import pathlib
import subprocess

from tests.helpers import REPO

PACKAGE = REPO / "microrwkv_jax"
OUTSIDE_LIBRARY = {"tests", "benchmarks", "torch_reference", "bench", "train", "sample", "convert_torch_ckpt",
                   "torch", "transformers"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: pathlib.Path):
    """Every module `path` imports, wherever the import statement is (functions included)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield full if is_module(full) else node.module


def library_graph() -> dict:
    return {module_name(p): set(imports_of(p)) for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_one_that_imports_it_back():
    graph = {m: {i for i in imported if i.startswith("microrwkv_jax")} for m, imported in library_graph().items()}
    done, on_path = set(), []

    def visit(module):
        if module in on_path:
            raise AssertionError("import circle: " + " -> ".join(on_path[on_path.index(module):] + [module]))
        if module in done:
            return
        on_path.append(module)
        for target in sorted(graph.get(module, ())):
            visit(target)
        on_path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_library_imports_no_script_benchmark_test_or_torch():
    offending = sorted((module, imported) for module, imports in library_graph().items() for imported in imports
                       if imported.split(".")[0] in OUTSIDE_LIBRARY)
    assert offending == []


def test_layers_know_no_model_family():
    offending = sorted((module, imported) for module, imports in library_graph().items() for imported in imports
                       if module.startswith("microrwkv_jax.layers") and imported.startswith("microrwkv_jax.families"))
    assert offending == []


def test_nothing_refers_to_files_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    hits = [name for name in tracked if not name.startswith(".ci/") and (REPO / name).is_file()
            and name.endswith((".py", ".md", ".sh", ".cfg", ".toml"))
            and "../" + "shared" in (REPO / name).read_text(errors="replace")]
    assert hits == []
