"""Unit tests of the governance stages on small real inputs."""

import pyarrow as pa
import pytest

from quality_models.config import (
    ConfigError,
    GovernanceConfig,
    governance_config_from_dict,
)
from quality_models.contract import documents_from_records
from quality_models.heuristics import quality_stage
from quality_models.shipped_text import running_text


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


def test_quality_rules_signals_and_languages():
    cfg = GovernanceConfig()
    texts = [
        running_text("de", "demo")[3],
        "#### $$$$ %%%% &&&& 1234 5678",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        "ok",
    ]
    table = _docs(texts, lang="de")
    res = quality_stage(table, cfg)
    assert res.kept.num_rows == 1
    assert {r.split(":")[0] for r in res.rejected["reason"].to_pylist()} <= {"gopher", "c4"}
    assert res.kept["quality_signals"][0].as_py().startswith("{")
    zh = quality_stage(_docs([running_text("zh", "demo")[4]], lang="zh"), cfg)
    assert zh.kept.num_rows == 1  # no whitespace, yet not "too few words"


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
