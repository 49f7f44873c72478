"""What pyproject.toml cannot say: the packages, found automatically, with the repository's
trainers/ folder (and any trainer package inside it) installed as ckptkit_trainers (see
[tool.setuptools.package-dir]; a top-level "trainers" would collide with other projects)."""
from setuptools import find_packages, setup

trainer_packages = ["ckptkit_trainers", *(f"ckptkit_trainers.{name}" for name in find_packages(where="trainers"))]
setup(packages=[*find_packages(include=["ckptkit", "ckptkit.*"]), *trainer_packages])
