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
from quality_models.langid import detect_script, language_id_stage, normalize_label
from quality_models.normalize import normalize_stage, normalize_text
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


def test_normalize_records_changes_and_keeps_originals_in_ledger():
    out, changes = normalize_text("Cafe\u0301\x00  au   lait\r\n")
    assert out == "Café au lait"
    assert set(changes) == {"control_chars_removed", "unicode_nfc", "whitespace"}
    fixed, changes = normalize_text("CafÃ© Ã¼ber")
    assert fixed == "Café über" and "mojibake_fixed" in changes
    res = normalize_stage(_docs(["ok text", "\x00\x01\x02"]))
    assert res.kept.num_rows == 1
    assert res.rejected["reason"].to_pylist() == ["empty_after_normalize"]
    assert res.rejected["text"].to_pylist() == ["\x00\x01\x02"]


def test_scripts_and_labels():
    assert detect_script("Привет, мир") == "Cyrl"
    assert detect_script("Γειά σου κόσμε") == "Grek"
    assert detect_script("مرحبا بالعالم") == "Arab"
    assert detect_script("नमस्ते दुनिया") == "Deva"
    assert detect_script("こんにちは世界") == "Jpan"
    assert detect_script("你好世界") == "Hani"
    assert detect_script("สวัสดีชาวโลก") == "Thai"
    assert detect_script("12 + 3") == "Zyyy"
    assert normalize_label("__label__de") == "de"
    assert normalize_label("__label__deu_Latn") == "de"
    assert normalize_label("__label__cmn_Hani") == "zh"


def test_language_id_routes_filters_and_respects_ablation():
    texts = [
        running_text("de", "demo")[0],
        running_text("ru", "demo")[0],
        running_text("en", "demo")[0],  # declared German: a wrong-language document
        running_text("fi", "demo")[0],  # Finnish is out of scope
    ]
    table = documents_from_records(
        {"doc_id": str(i), "source": "t", "text": t, "declared_lang": d}
        for i, (t, d) in enumerate(zip(texts, ["de", None, "de", None], strict=True))
    )
    cfg = GovernanceConfig(languages=["de", "ru", "en"])
    res = language_id_stage(table, cfg)
    assert res.kept["lang"].to_pylist() == ["de", "ru"]
    assert res.kept["script"].to_pylist() == ["Latn", "Cyrl"]
    assert sorted(res.rejected["reason"].to_pylist()) == [
        "language_mismatch",
        "out_of_scope_language",
    ]
    cfg.language_id.enabled = False  # no_lid: declared language wins, nothing filtered in scope
    res = language_id_stage(table, cfg)
    assert res.kept["lang"].to_pylist() == ["de", "ru", "de"]


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
