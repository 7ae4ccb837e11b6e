"""The package's shape: imports point one way (no cycle among its modules, imports inside functions included),
models/ imports only models/, and no wing dispatches on a model with hasattr (the contracts say what a model has)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mlx_qwen3_embed"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports, anywhere in the file; `from pkg import name` counts the module
    pkg.name when there is one, else pkg."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in modules else target)
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    files = list(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports(f, modules) for f in files}


def test_no_import_cycles():
    edges = graph()
    # a package's __init__ re-exporting its own modules is how Python packages work: not a cycle of modules
    edges = {m: {t for t in targets if not (m.startswith(t + ".") and t in edges)} for m, targets in edges.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_models_import_only_models():
    for module, targets in graph().items():
        if module.startswith("mlx_qwen3_embed.models"):
            assert all(t.startswith("mlx_qwen3_embed.models") for t in targets), (module, targets)


MODEL_NAMES = {"embedder", "reranker", "model", "scorer"}


def test_no_hasattr_dispatch_on_a_model():
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("hasattr", "getattr") and node.args:
                subject = node.args[0]
                name = subject.attr if isinstance(subject, ast.Attribute) else getattr(subject, "id", "")
                if name in MODEL_NAMES:
                    found.append(f"{path.relative_to(PACKAGE)}: {ast.unparse(node)}")
    assert found == []


def test_one_text_runs_through_five_package_files(embedder):
    """A loaded model embeds a text through embedder, tokenizer, batching, the model and pooling: nothing else."""
    import sys

    embedder.embed("warm up")
    files = set()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(str(PACKAGE)):
            files.add(Path(frame.f_code.co_filename).relative_to(PACKAGE).as_posix())

    sys.setprofile(profile)
    try:
        embedder.embed("hi")
    finally:
        sys.setprofile(None)
    assert files == {"embedder.py", "tokenizer.py", "batching.py", "models/qwen3.py", "pooling.py"}
