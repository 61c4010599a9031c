"""The data root every asset reads and writes (DESIGN §2: `./.govtune` or `GOVTUNE_HOME`)."""

import os
from pathlib import Path

import dagster as dg


def default_home() -> str:
    return os.environ.get("GOVTUNE_HOME", str(Path.cwd() / ".govtune"))


class GovtuneHome(dg.ConfigurableResource):
    """Paths under the data root; one place that knows the layout."""

    root: str = default_home()

    def path(self, *parts: str) -> Path:
        return Path(self.root).joinpath(*parts)

    def stage_dir(self, variant: str, stage: str, name: str) -> Path:
        """A stage's published output for one partition: kept + ledger files and the manifest
        that publishes them together (`quality_models.storage`)."""
        return self.path("stages", variant, stage, name)

    def ledger_file(self, variant: str) -> Path:
        """Every ledger row of one governance variant, all stages together (the `ledger`
        asset writes it; the rows themselves live with each stage's published output)."""
        return self.path("rejected", f"{variant}.parquet")

    def curated_dir(self, variant: str) -> Path:
        return self.path("curated", variant)

    def kenlm_dir(self, lang: str) -> Path:
        return self.path("quality_models", lang)
