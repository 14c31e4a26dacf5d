"""The package as a whole: the public API (every name documented), small modules, the layers contract."""

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import bouquet as bq

SRC = Path(bq.__file__).resolve().parent
REPO = SRC.parents[1]


def _own_doc(obj) -> str:
    """The object's own docstring (not a dataclass's generated signature, not one inherited from object)."""
    doc = obj.__doc__ or ""
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""  # dataclasses without a docstring get "Name(field: type, ...)"
    return doc.strip()


def test_every_public_name_resolves_and_has_a_docstring():
    missing = []
    for name in bq.__all__:
        obj = getattr(bq, name)
        if isinstance(obj, dict):  # a registry: documented where it is defined
            continue
        if not _own_doc(obj):
            missing.append(name)
    assert not missing, f"public names without a docstring: {missing}"
    assert sorted(dir(bq)) == sorted([*bq.__all__, "__version__"])


def test_import_bouquet_is_light():
    """``import bouquet`` loads no torch: names come on first use (Flower apps and the CLI start fast)."""
    code = "import sys, bouquet; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_modules_stay_under_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) >= 400}
    assert not long, f"modules of 400 lines or more: {long}"


def test_no_function_level_imports_of_bouquet_modules():
    """Imports inside functions hide cycles; only the optional Flower runtime may be imported late."""
    allowed = {"bouquet.app.flower_run", "bouquet.flower.deploy", ".flower_run", "...flower.deploy", "..flower_run",
               "..flower.node_worker", "..flower.supernode", "..flower.superlink", ".flower_export"}
    found = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("bouquet")):
                    target = "." * node.level + (node.module or "")
                    if target not in allowed:
                        found.append(f"{path.relative_to(SRC)}:{node.lineno} {target}")
    assert not found, found


def test_layers_contract_holds():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
