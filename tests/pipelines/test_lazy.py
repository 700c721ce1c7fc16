"""Lazy package exports: importing a package does not import what it exports until it is used."""

from __future__ import annotations

import ast
import subprocess
import sys
import types

import pytest

from pipelines.lazy import lazy_exports


def test_an_export_is_imported_on_first_use_and_cached(monkeypatch):
    package = types.ModuleType("fakepkg")
    monkeypatch.setitem(sys.modules, "fakepkg", package)
    package.__getattr__ = lazy_exports("fakepkg", {"dumps": "json"})
    import json

    assert package.dumps is json.dumps
    assert "dumps" in vars(package)  # cached: the next access does not go through __getattr__


def test_an_unknown_name_is_an_attribute_error():
    getattr_ = lazy_exports("fakepkg", {"dumps": "json"})
    with pytest.raises(AttributeError, match="module 'fakepkg' has no attribute 'loads'"):
        getattr_("loads")


def _loaded_after(imports: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with one of `prefixes` that a fresh interpreter holds after `imports`
    (this test session has imported everything already)."""
    code = f"import sys; {imports}; print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return ast.literal_eval(out)  # the list the child printed


def test_importing_the_readers_does_not_import_the_writer():
    assert _loaded_after("import pipelines.readers", ("pipelines.generate", "torchvision")) == []


def test_importing_the_packages_does_not_import_what_they_export():
    loaded = _loaded_after(
        "import pipelines.data, pipelines.generate, pipelines.readers",
        ("torchvision", "pipelines.generate.driver", "pipelines.data.cifar", "pipelines.data.sources"),
    )
    assert loaded == []
