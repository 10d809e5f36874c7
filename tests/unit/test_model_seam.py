"""The model-family seam: family detection from a checkpoint directory (and what is refused), dictionaries checked
against the checkpoint before anything runs, and the package layering of DESIGN.md section 2 (which layer may import
which; nothing outside analysis/models names a family's package)."""
import ast
import json
import shutil
from pathlib import Path

import pytest

from analysis.config import TokenizerConfig
from analysis.errors import InputError
from analysis.models.base import detect_family, load_adapter
from tests.conftest import ROOT, shared_path


def test_detects_each_family(tmp_path):
    gf = tmp_path / "gf"
    shutil.copytree(shared_path("geneformer/configs/Geneformer-V1-10M"), gf)
    sc = tmp_path / "sc"
    sc.mkdir()
    shutil.copy(shared_path("scgpt/args_whole_human.json"), sc / "args.json")
    shutil.copy(shared_path("scgpt/vocab_whole_human_60697.json"), sc / "vocab.json")
    assert detect_family(gf) == "geneformer" and detect_family(sc) == "scgpt"
    assert load_adapter(gf, random_init=True, device="cpu").family == "geneformer"
    with pytest.raises(InputError, match="no config.json"):
        load_adapter(sc, family="geneformer", random_init=True, device="cpu")   # the override is obeyed


@pytest.mark.parametrize("case,message", [
    ("gpt2", "model_type 'gpt2': not a Geneformer checkpoint"),
    ("scgpt_args_renamed", "model_type None: not a Geneformer checkpoint"),
    ("empty", r"found \['weights.bin'\]; expected config.json \(Geneformer\) or args.json"),
    ("both", "pass --model-family"),
    ("family", "model family 'esm' is not supported")])
def test_unidentifiable_directories_are_refused(tmp_path, case, message):
    if case == "gpt2":
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 12}))
    elif case == "scgpt_args_renamed":
        shutil.copy(shared_path("scgpt/args_whole_human.json"), tmp_path / "config.json")
    elif case == "empty":
        (tmp_path / "weights.bin").write_bytes(b"")
    elif case == "both":
        shutil.copy(shared_path("geneformer/configs/Geneformer-V1-10M/config.json"), tmp_path / "config.json")
        shutil.copy(shared_path("scgpt/args_whole_human.json"), tmp_path / "args.json")
        shutil.copy(shared_path("scgpt/vocab_whole_human_60697.json"), tmp_path / "vocab.json")
    with pytest.raises(InputError, match=message):
        load_adapter(tmp_path, family="esm" if case == "family" else None, random_init=True, device="cpu")


@pytest.mark.parametrize("model,dicts", [("Geneformer-V1-10M", "dict_gc104M"), ("Geneformer-V2-104M", "dict_gc30M")])
def test_dictionaries_of_another_model_are_refused(model, dicts):
    adapter = load_adapter(shared_path(f"geneformer/configs/{model}"), random_init=True, device="cpu")
    with pytest.raises(InputError, match="belong to another model"):
        adapter.tokenizer(TokenizerConfig(), shared_path(f"geneformer/{dicts}"))


def test_matching_dictionaries_are_accepted():
    adapter = load_adapter(shared_path("geneformer/configs/Geneformer-V1-10M"), random_init=True, device="cpu")
    assert adapter.tokenizer(TokenizerConfig(), shared_path("geneformer/dict_gc30M")).dicts.pad_id == 0


# DESIGN.md section 2: the packages each layer may import (besides itself, config and errors)
ALLOWED = {"io": set(), "models": {"io"}, "interp": {"models", "io"}, "scoring": {"io"},
           "sim": {"io", "models", "interp", "scoring"}, "rerun": {"models", "interp", "scoring", "io"},
           "results": {"io", "scoring"}}                  # a finished run for notebooks: reads, never runs a model
TORCH_FREE = ("io", "scoring", "results")


def imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module, inside a function) for every import of a file of the project."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []

    def visit(node, nested):
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                out.append((".".join(base + ([child.module] if child.module else [])), inner))
            elif isinstance(child, ast.Import):
                out.extend((a.name, inner) for a in child.names)
            visit(child, inner)
    visit(tree, False)
    return out


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "analysis" and len(parts) > 1 else None


def test_layers_import_only_what_design_allows():
    problems = []
    for path in sorted((ROOT / "analysis").rglob("*.py")):
        layer = layer_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if layer not in ALLOWED:
            continue
        for module, _ in imports(path):
            target = layer_of(module)
            if target and target not in ALLOWED[layer] | {layer, "config", "errors"}:
                problems.append(f"{path.relative_to(ROOT)} imports {module}")
            if layer in TORCH_FREE and module.split(".")[0] in ("torch", "transformers"):
                problems.append(f"{path.relative_to(ROOT)} imports {module} (must stay torch-free)")
    assert not problems, problems


def test_nothing_outside_models_imports_a_family_package():
    problems = [f"{p.relative_to(ROOT)} imports {m}" for p in sorted(ROOT.glob("**/*.py"))
                if ".venv" not in p.parts and "tests" not in p.parts and "models" not in p.relative_to(ROOT).parts
                for m, _ in imports(p) if m.startswith(("analysis.models.geneformer", "analysis.models.scgpt"))]
    assert not problems, problems


APP_MAY_IMPORT = ("analysis.io", "analysis.scoring", "analysis.interp.interventions", "analysis.config",
                  "analysis.errors")


def test_app_imports_only_what_design_allows():
    """The app reads runs: io, scoring, interventions (and config, errors); rerun only inside background jobs;
    never stages, sim, models or torch."""
    problems = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        for module, nested in imports(path):
            if module.split(".")[0] in ("torch", "transformers"):
                problems.append(f"{path.relative_to(ROOT)} imports {module}")
            elif module.startswith("analysis.rerun"):
                if not nested:
                    problems.append(f"{path.relative_to(ROOT)} imports {module} at module level (jobs only)")
            elif module.startswith("analysis") and not module.startswith(APP_MAY_IMPORT):
                problems.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not problems, problems


def test_public_api_resolves_lazily():
    import subprocess
    import sys

    import analysis

    for name in analysis.__all__:
        assert getattr(analysis, name) is not None, name
    code = "import sys, analysis.io.cells, analysis.scoring.ranking; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"   # the torch-free layers stay torch-free through the package import
