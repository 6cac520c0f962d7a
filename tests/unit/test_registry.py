"""Handler registry: namespaces, counts and discovery of ``workers/`` modules."""

from __future__ import annotations

import pytest

from tasker.registry import HandlerRegistry, discover_handler_modules, namespace_of


@pytest.mark.parametrize(("module", "namespace"), [
    ("workers.diagnostics", "diagnostics"),
    ("workers.billing", "billing"),
    ("workers.billing.invoices", "billing"),
])
def test_namespace_of_a_handler_module(module: str, namespace: str) -> None:
    assert namespace_of(module) == namespace


@pytest.mark.parametrize("module", ["workers", "tasker.loadgen", "__main__", "myworkers.x"])
def test_namespace_of_a_module_outside_workers_is_an_error(module: str) -> None:
    with pytest.raises(ValueError, match="workers/<namespace>.py"):
        namespace_of(module)


def test_handler_registry_counts_namespaces_and_membership() -> None:
    reg = HandlerRegistry()
    assert len(reg) == 0 and reg.counts() == {} and reg.namespaces() == {}
    reg.add("diagnostics", "diagnostics.sleep")
    reg.add("billing", "billing.invoice")
    reg.add("diagnostics", "diagnostics.noop")
    reg.add("diagnostics", "diagnostics.noop")  # registering twice counts once
    assert len(reg) == 3
    assert reg.counts() == {"billing": 1, "diagnostics": 2}
    assert list(reg.counts()) == ["billing", "diagnostics"]  # sorted
    assert reg.namespaces() == {"billing": ["billing.invoice"],
                                "diagnostics": ["diagnostics.noop", "diagnostics.sleep"]}
    assert "diagnostics.noop" in reg
    assert "billing.invoice" in reg
    assert "diagnostics.fail" not in reg
    assert "noop" not in reg
    assert "diagnostics.noop" not in HandlerRegistry()  # registries are independent


def test_discover_finds_the_shipped_diagnostics_module() -> None:
    modules = discover_handler_modules()
    assert "workers.diagnostics" in modules
    assert modules == sorted(modules)
    assert not any(m.rsplit(".", 1)[1].startswith("_") for m in modules)


def test_importing_diagnostics_registers_its_handlers() -> None:
    import workers.diagnostics  # noqa: F401
    from tasker.registry import registry

    for name in ("noop", "sleep", "fail", "hold_db"):
        assert f"diagnostics.{name}" in registry
    assert registry.counts()["diagnostics"] >= 4
