"""Unit tests of the governance stages on small real inputs."""

import pyarrow as pa
import pytest

from quality_models.config import (
    ConfigError,
    governance_config_from_dict,
)
from quality_models.contract import documents_from_records


def _docs(texts, lang=None, declared=None):
    return documents_from_records(
        {
            "doc_id": f"d{i:04d}",
            "source": "test",
            "text": t,
            "lang": lang,
            "declared_lang": declared,
        }
        for i, t in enumerate(texts)
    )


# LID and normalisation tests: tests/test_langid.py


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown key"):
        governance_config_from_dict({"dedup": {"num_perms": 128}})
    with pytest.raises(ConfigError, match="exceeds num_perm"):
        governance_config_from_dict({"dedup": {"num_perm": 64}})
    with pytest.raises(ConfigError, match="expected int"):
        governance_config_from_dict({"dedup": {"bands": "many"}})
    cfg = governance_config_from_dict({"dedup": {"bands": 20, "rows": 5, "num_perm": 100}})
    assert cfg.dedup.effective_threshold == pytest.approx(0.5493, abs=1e-3)
    assert isinstance(pa.table({"a": [1]}), pa.Table)
