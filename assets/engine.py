"""The engine resource: where the governance stages run (``quality_models/engine.py``).

``EngineResource()`` (the default) uses the governance config's ``engine`` section; set ``name``
(``local`` | ``ray``), ``address`` (a Ray cluster: ``ray://head:10001``, ``auto`` under ``ray
start``, or the address a dagster-ray ``KubeRayCluster`` resource reports), ``num_cpus``,
``batch_rows`` or ``partitions`` here to override it for a deployment without touching the
YAML. The asset graph, partitions, checks and ledger are the same on every engine, and so are
the outputs (``tests/test_engine.py``).
"""

from __future__ import annotations

import dataclasses

import dagster as dg

from quality_models.config import GovernanceConfig


class EngineResource(dg.ConfigurableResource):
    """Overrides of the governance config's ``engine`` section (``None``: keep the config's)."""

    name: str | None = None
    address: str | None = None
    num_cpus: int | None = None
    batch_rows: int | None = None
    partitions: int | None = None

    def apply(self, config: GovernanceConfig) -> GovernanceConfig:
        """``config`` with this resource's engine settings."""
        changes = {
            k: v
            for k in ("name", "address", "num_cpus", "batch_rows", "partitions")
            if (v := getattr(self, k)) is not None
        }
        if self.address and "name" not in changes:
            changes["name"] = "ray"
        if not changes:
            return config
        engine = dataclasses.replace(config.engine, **changes)
        engine.validate("engine resource")
        return dataclasses.replace(config, engine=engine)
