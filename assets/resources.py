"""The data root every asset reads and writes (DESIGN §2: ``./.govtune`` or ``GOVTUNE_HOME``)."""

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

    def stage_file(self, variant: str, stage: str, name: str) -> Path:
        return self.path("stages", variant, stage, f"{name}.parquet")

    def ledger_file(self, variant: str, stage: str, name: str) -> Path:
        return self.path("rejected", variant, stage, f"{name}.parquet")

    def curated_dir(self, variant: str) -> Path:
        return self.path("curated", variant)

    def kenlm_dir(self, lang: str) -> Path:
        return self.path("quality_models", lang)
