"""Rendering the Helm chart with the pinned helm binary (``make helm-check`` installs it)."""

from __future__ import annotations

import copy
import importlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "contextiq"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "ciqtest"
NAMESPACE = "agents"

Manifest = dict[str, Any]

# PyYAML comes with the locked dependencies, its type stubs do not: use it untyped.
_yaml: Any = importlib.import_module("yaml")


def load_yaml(text: str) -> Any:
    """One YAML document."""
    return _yaml.safe_load(text)


def load_yaml_all(text: str) -> list[Any]:
    """Every non-empty document of a YAML stream."""
    return [doc for doc in _yaml.safe_load_all(text) if doc]


def helm_binary() -> Path | None:
    """``$HELM`` (set by ``make helm-check``), else the pinned ``.tools/bin/helm``."""
    path = Path(os.environ.get("HELM") or REPO / ".tools" / "bin" / "helm")
    return path if path.is_file() and os.access(path, os.X_OK) else None


class Renderer:
    """Runs ``helm template`` on the chart and parses the manifests."""

    def __init__(self, helm: Path, home: Path) -> None:
        self._helm = helm
        self._env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        self._home = home
        self._count = 0
        self._cache: dict[str, list[Manifest]] = {}

    def run(
        self, values: Mapping[str, Any] | None = None, files: tuple[Path, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """``helm template`` with values files, then ``values`` (as a file: types are kept)."""
        args = [str(self._helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        for file in files:
            args += ["--values", str(file)]
        if values is not None:
            self._count += 1
            extra = self._home / f"values-{self._count}.yaml"
            extra.write_text(_yaml.safe_dump(dict(values)))
            args += ["--values", str(extra)]
        return subprocess.run(
            args, env=self._env, capture_output=True, text=True, timeout=60, check=False
        )

    def render(
        self, values: Mapping[str, Any] | None = None, files: tuple[Path, ...] = ()
    ) -> list[Manifest]:
        """The rendered manifests (a fresh copy); fails the test when helm fails."""
        key = json.dumps([dict(values or {}), [str(f) for f in files]], sort_keys=True)
        if key not in self._cache:
            done = self.run(values, files)
            assert done.returncode == 0, done.stderr
            self._cache[key] = load_yaml_all(done.stdout)
        return copy.deepcopy(self._cache[key])


@pytest.fixture(scope="session")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    helm = helm_binary()
    if helm is None:
        pytest.skip("no helm binary: `make helm-check` installs the pinned one in .tools/bin")
    return Renderer(helm, tmp_path_factory.mktemp("helm-home"))


def kinds(manifests: list[Manifest], kind: str) -> list[Manifest]:
    """The manifests of one kind."""
    return [m for m in manifests if m["kind"] == kind]


def by_name(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    """The manifests of one kind by metadata.name."""
    return {m["metadata"]["name"]: m for m in kinds(manifests, kind)}
