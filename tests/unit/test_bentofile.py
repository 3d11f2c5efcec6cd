"""bentofile.yaml repeats the serving dependencies for the Bento's image; keep them equal."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pathspec
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_bento_packages_equal_the_project_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["packages"]
    # bentoml itself comes with the image BentoML builds; the Bento serves no Triton, so it
    # leaves out nvidia-pytriton (a large tritonserver binary it would never start).
    assert sorted(bento) == sorted(
        d for d in project if not d.startswith(("bentoml", "nvidia-pytriton"))
    )


def test_bento_includes_every_module_the_service_imports() -> None:
    """Every project file `import service` loads is one the Bento's include patterns take."""
    include = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["include"]
    spec = pathspec.PathSpec.from_lines("gitwildmatch", include)
    listing = (
        "import sys, service; print('\\n'.join(getattr(m, '__file__', None) or '' "
        "for m in list(sys.modules.values())))"
    )
    done = subprocess.run(
        [sys.executable, "-c", listing], cwd=ROOT, capture_output=True, text=True, check=True
    )
    files = {
        Path(line).resolve().relative_to(ROOT).as_posix()
        for line in done.stdout.splitlines()
        if line and Path(line).resolve().is_relative_to(ROOT) and ".venv" not in Path(line).parts
    }
    assert "service.py" in files and "lifecycle/consistency.py" in files
    assert not [f for f in sorted(files) if not spec.match_file(f)]


def test_bento_includes_the_console_templates_and_static_files() -> None:
    """The console reads these at run time: no import lists them."""
    include = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["include"]
    spec = pathspec.PathSpec.from_lines("gitwildmatch", include)
    files = [
        path.relative_to(ROOT).as_posix()
        for folder in ("console/templates", "console/static")
        for path in (ROOT / folder).rglob("*")
        if path.is_file()
    ]
    assert "console/static/vendor/uPlot.iife.min.js" in files
    assert not [f for f in files if not spec.match_file(f)]
