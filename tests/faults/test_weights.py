"""Only safetensors and weights-only checkpoints are ever loaded: an AST scan of src/ for
every call that could unpickle."""

from __future__ import annotations

import ast
from pathlib import Path


SRC = Path(__file__).resolve().parents[2] / "src" / "medmap"
UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
              "marshal"}
LOADERS = {"load", "loads", "Unpickler", "open"}


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def unsafe_loads(root: Path) -> list[str]:
    """Every place under ``root`` that loads weights other than via safetensors or a
    ``weights_only=True`` torch.load, one line each (file:line: what)."""
    out = []
    for f in sorted(root.rglob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
        where = f.relative_to(root.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in \
                    UNPICKLERS | {"torch"} and {a.name for a in node.names} & LOADERS:
                out.append(f"{where}:{node.lineno}: from {node.module} import "
                           f"{', '.join(sorted({a.name for a in node.names} & LOADERS))}")
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if name.split(".")[0] in UNPICKLERS and last in LOADERS:
                out.append(f"{where}:{node.lineno}: {name} (unpickles)")
            elif name == "torch.load":
                if not _true(_kw(node, "weights_only")):
                    out.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            elif last == "load_from_checkpoint":
                out.append(f"{where}:{node.lineno}: {name} (Lightning unpickles the file)")
            elif name in ("torch.jit.load", "torch.package.PackageImporter"):
                out.append(f"{where}:{node.lineno}: {name}")
            elif last == "load" and name.split(".")[0] in ("np", "numpy") and \
                    _true(_kw(node, "allow_pickle")):
                out.append(f"{where}:{node.lineno}: {name}(allow_pickle=True)")
            elif _kw(node, "ckpt_path") is not None and not _true(_kw(node, "weights_only")):
                out.append(f"{where}:{node.lineno}: {name}(ckpt_path=...) without "
                           "weights_only=True (Lightning's torch.load then follows the "
                           "process default)")
    return sorted(out, key=lambda ln: (ln.split(":")[0], int(ln.split(":")[1])))


def test_the_scan_finds_each_unsafe_load(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "import pickle\nimport torch\nimport numpy as np\nobj = pickle.loads(b'')\n"
        "x = torch.load('m.pt')\ny = torch.load('m.pt', weights_only=False)\n"
        "z = torch.load('m.pt', map_location='cpu', weights_only=True)\n"
        "trainer.fit(m, ckpt_path='last.ckpt')\ntrainer.fit(m, ckpt_path=p, weights_only=True)\n"
        "M.load_from_checkpoint('x.ckpt')\nnp.load('a.npy', allow_pickle=True)\n"
        "np.load('a.npy')\nfrom dill import load\nexcept_ok = pickle.UnpicklingError\n")
    found = unsafe_loads(pkg)
    assert [ln.split(": ", 1)[0] for ln in found] == [f"pkg/a.py:{n}" for n in (4, 5, 6, 8, 10, 11, 13)]


def test_src_loads_only_safetensors_and_weights_only_checkpoints():
    found = unsafe_loads(SRC)
    assert found == [], "\n".join(found)
