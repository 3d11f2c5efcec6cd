"""bentofile.yaml repeats the serving dependencies for the Bento's image; keep them equal."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_bento_packages_equal_the_project_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["packages"]
    # bentoml itself comes with the image BentoML builds; the Bento serves no Triton, so it
    # leaves out nvidia-pytriton (a 55 MB tritonserver it would never start).
    assert sorted(bento) == sorted(
        d for d in project if not d.startswith(("bentoml", "nvidia-pytriton"))
    )


def test_bento_includes_every_package_the_service_imports() -> None:
    include = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["include"]
    for package in ("serving/*.py", "runners/*.py", "runners/backends/*.py"):
        assert package in include
