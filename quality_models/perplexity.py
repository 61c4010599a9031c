"""Label-free quality filtering by KenLM perplexity, as CCNet does it, with models we train.

Peers (datatrove, data-juicer) download CCNet's pretrained models; govtune trains one n-gram
model per language from a reference text of the user's choice (``quality_models.reference``), so
the models are pipeline outputs with lineage and can be rebuilt for any language.

* **Normalisation** follows CCNet: lower-case, every digit folded to ``0``, Unicode punctuation
  mapped to ASCII, non-printing characters removed. Accents are kept (they carry meaning in
  most of our languages, and the model sees the same text at training and scoring time).
* **Tokens.** Words split on whitespace with punctuation split off. Languages written without
  spaces between words (zh, ja, th, ...) are modelled per character instead (runs of Latin
  letters and digits stay one token): a word segmenter per language would be one more model to
  ship, and CCNet's SentencePiece route would need a second trained artefact per language;
  a character n-gram captures the same local fluency at the cost of a higher order.
* **Perplexity** of a document is CCNet's: the log10 probabilities of its lines (each with
  ``<s>``/``</s>``) summed, divided by the number of tokens plus one end marker per line, and
  ``10 ** -(that)``.
* **Buckets** head/middle/tail from per-language percentiles (30/60, as CCNet) of the perplexities
  of the documents being scored, or fixed cutoffs. Policy ``drop_tail`` moves tail documents to
  the ledger; ``label_only`` keeps everything and only labels.

Training runs KenLM's own ``lmplz`` (always with an explicit ``-S`` memory bound: without it
lmplz reserves 80% of RAM) and ``build_binary``; ``scripts/build_kenlm.sh`` builds both.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from .contract import StageResult, split_by_mask

STAGE = "perplexity"
TAIL_REASON = "perplexity_tail"
BUCKETS = ("head", "middle", "tail")
POLICIES = ("drop_tail", "label_only")
BINARY_TYPES = ("trie", "probing")
# languages written without spaces between words: modelled per character
CHAR_LANGUAGES = ("zh", "ja", "th", "lo", "km", "my", "bo", "dz", "yue", "wuu")
NORMALIZER_VERSION = "ccnet-1"  # bump when normalisation or tokenisation changes: models go stale
TOOLS_ENV = "GOVTUNE_KENLM_BIN"
REPO_TOOLS = Path(__file__).resolve().parents[1] / ".tools" / "kenlm" / "bin"
BUILD_HINT = "build them with scripts/build_kenlm.sh (make test and make demo run it)"
_MEMORY = re.compile(r"^\d+(\.\d+)?[%bKMGTPEZY]?$")
_LANG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


class KenLMError(RuntimeError):
    """A KenLM tool is missing, cannot run, or failed; the message names it and its stderr."""


class NotEnoughReferenceText(ValueError):
    """Too little reference text to train a model; the language's documents then pass through."""


class ModelLoadError(ValueError):
    """A KenLM model file is missing or unreadable; the message names the file."""


@dataclass
class KenLMConfig:
    """Training and scoring settings. Defaults follow CCNet (5-gram, 30/60 percentiles)."""

    order: int = 5
    memory: str = "1G"  # lmplz/build_binary -S: never let lmplz take its default 80% of RAM
    discount_fallback: bool = True  # small corpora lack the singletons the closed form needs
    prune: tuple[int, ...] = ()  # lmplz --prune thresholds per order, e.g. (0, 0, 1)
    binary_type: str = "trie"  # trie is compact; probing is faster to query and larger
    quantize_bits: int | None = None  # build_binary -q (trie only): smaller, slightly lossy
    keep_arpa: bool = False
    min_reference_lines: int = 20
    min_reference_tokens: int = 2_000
    char_languages: tuple[str, ...] = CHAR_LANGUAGES
    percentiles: tuple[float, float] = (30.0, 60.0)
    policy: str = "drop_tail"
    min_docs_for_cutoffs: int = 10  # fewer scored documents: no data-derived buckets
    fixed_cutoffs: dict[str, tuple[float, float]] = field(default_factory=dict)
    histogram_bins: int = 20

    def __post_init__(self) -> None:
        self.prune = tuple(int(p) for p in self.prune)
        self.char_languages = tuple(self.char_languages)
        self.percentiles = tuple(float(p) for p in self.percentiles)  # type: ignore[assignment]
        self.fixed_cutoffs = {
            str(k): _check_cutoffs(v, f"fixed_cutoffs[{k!r}]")
            for k, v in dict(self.fixed_cutoffs).items()
        }
        if not isinstance(self.order, int) or not 1 <= self.order <= 6:
            raise ValueError(
                f"order must be an integer from 1 to 6 (KenLM's limit), not {self.order!r}"
            )
        if not _MEMORY.match(str(self.memory)):
            raise ValueError(
                f"memory must be a size like 1G, 512M or 20% (lmplz -S), not {self.memory!r}"
            )
        if self.prune and (len(self.prune) > self.order or list(self.prune) != sorted(self.prune)):
            raise ValueError(
                f"prune must be non-decreasing, one value per order at most: {self.prune}"
            )
        if self.binary_type not in BINARY_TYPES:
            raise ValueError(f"binary_type must be one of {BINARY_TYPES}, not {self.binary_type!r}")
        if self.quantize_bits is not None and (
            self.binary_type != "trie" or not 1 <= int(self.quantize_bits) <= 25
        ):
            raise ValueError("quantize_bits needs binary_type='trie' and a value from 1 to 25")
        if len(self.percentiles) != 2 or not 0 < self.percentiles[0] <= self.percentiles[1] < 100:
            raise ValueError(
                f"percentiles must be two values 0 < head <= tail < 100, not {self.percentiles}"
            )
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {self.policy!r}")
        if self.min_reference_lines < 1 or self.min_reference_tokens < 1:
            raise ValueError("min_reference_lines and min_reference_tokens must be at least 1")
        if self.min_docs_for_cutoffs < 1 or self.histogram_bins < 1:
            raise ValueError("min_docs_for_cutoffs and histogram_bins must be at least 1")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> KenLMConfig:
        """Build from a YAML/Dagster mapping; an unknown key is a clear error, not a TypeError."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown KenLM setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        return cls(**dict(data))

    def unit(self, lang: str) -> str:
        """``"char"`` for languages written without spaces, else ``"word"``."""
        return "char" if _base_lang(lang) in self.char_languages else "word"

    def training_settings(self, lang: str) -> dict[str, Any]:
        """What determines the trained model (not memory): the model's data version."""
        return {
            "order": self.order,
            "prune": list(self.prune),
            "discount_fallback": self.discount_fallback,
            "binary_type": self.binary_type,
            "quantize_bits": self.quantize_bits,
            "unit": self.unit(lang),
            "normalizer": NORMALIZER_VERSION,
        }


def _check_cutoffs(value: Any, where: str) -> tuple[float, float]:
    try:
        head, tail = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be two numbers (head, tail), not {value!r}") from None
    if not 0 < head <= tail:
        raise ValueError(f"{where} must satisfy 0 < head <= tail, not {(head, tail)}")
    return head, tail


def _base_lang(lang: str) -> str:
    return re.split(r"[_@.-]", lang or "", maxsplit=1)[0].lower()


# --------------------------------------------------------------------------- normalisation

_PUNCT_MAP = {
    "，": ",", "、": ",", "。": ".", "．": ".", "：": ":", "∶": ":", "；": ";", "？": "?",
    "！": "!", "（": "(", "）": ")", "［": "[", "］": "]", "【": "[", "】": "]", "｛": "{",
    "｝": "}", "「": '"', "」": '"', "『": '"', "』": '"', "《": '"', "》": '"', "〈": "<",
    "〉": ">", "«": '"', "»": '"', "„": '"', "“": '"', "”": '"', "‟": '"', "″": '"', "‹": "'",
    "›": "'", "‘": "'", "’": "'", "‚": "'", "‛": "'", "´": "'", "`": "'", "′": "'", "–": "-",
    "—": "-", "―": "-", "‐": "-", "‑": "-", "‒": "-", "−": "-", "━": "-", "…": "...",
    "～": "~", "％": "%", "•": "-", "►": "-", "▪": "-",
}  # fmt: skip
_TRANSLATE: dict[int, str | None] = {ord(k): v for k, v in _PUNCT_MAP.items()}
# remaining full-width ASCII (letters, digits, symbols) -> ASCII, as NFKC would
_TRANSLATE.update({c: chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F) if c not in _TRANSLATE})
# non-printing characters; ZWNJ/ZWJ (U+200C/D) are kept: they spell words in Indic and Persian
_TRANSLATE.update(
    dict.fromkeys(
        [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), 0x00AD, 0x200B, 0x200E,
         0x200F, *range(0x202A, 0x202F), *range(0x2060, 0x2065), *range(0x2066, 0x206A), 0xFEFF]
    )
)  # fmt: skip
# one regex pass over the few characters to map is much faster than str.translate with a dict
_MAP = {chr(k): v or "" for k, v in _TRANSLATE.items()}
_MAP_RE = re.compile("[" + "".join(re.escape(c) for c in _MAP) + "]")
_DIGITS = re.compile(r"\d")
# Punctuation and symbols (after normalisation mostly ASCII). A run of them is one token, so
# that "!!!!" or "####" is one unknown token, not four cheap repetitions of a common one.
_PUNCT_CLASS = (
    r"[!-/:-@\[-`{-~\u00a1-\u00bf\u00d7\u00f7\u037e\u0387\u055a-\u055f\u0589\u05be\u05c0"
    r"\u05c3\u05f3\u05f4\u060c\u061b\u061f\u066a-\u066d\u06d4\u0964\u0965"
    r"\u2010-\u2027\u2030-\u205e\u20a0-\u20cf\u3001-\u3003\u3008-\u3011\u3014-\u301f]"
)
# Characters of scripts written without spaces (Thai, Lao, Tibetan, Myanmar, Khmer, kana, Han)
# are one token each even in word mode: otherwise a Chinese paragraph scored by a word model is
# a few giant unknown tokens between well-known punctuation marks, and looks fluent.
_NO_SPACE_CLASS = (
    r"[\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf"
    r"\u4e00-\u9fff\uf900-\ufaff]"
)
_WORD_TOKEN = re.compile(
    f"{_PUNCT_CLASS}+|{_NO_SPACE_CLASS}|[^\\s{_PUNCT_CLASS[1:-1]}{_NO_SPACE_CLASS[1:-1]}]+"
)
# char mode: runs of Latin letters/digits and runs of punctuation stay one token each
_CHAR_TOKEN = re.compile(f"[0-9a-z\u00c0-\u024f]+|{_PUNCT_CLASS}+|\\S")


def normalize_for_lm(text: str) -> str:
    """CCNet-style normalisation: lower case, digits -> 0, ASCII punctuation, no control chars."""
    return _DIGITS.sub("0", _MAP_RE.sub(_map_char, text.lower()))


def _map_char(m: re.Match) -> str:
    return _MAP[m.group()]


def tokenize_for_lm(line: str, unit: str = "word") -> list[str]:
    """Tokens of one already-normalised line: words with punctuation split off, or characters."""
    if unit == "char":
        return _CHAR_TOKEN.findall(line)
    if unit != "word":
        raise ValueError(f"unit must be 'word' or 'char', not {unit!r}")
    return _WORD_TOKEN.findall(line)


def lm_lines(text: str, unit: str = "word") -> list[str]:
    """The space-joined token lines KenLM sees for ``text`` (one per non-empty input line)."""
    out = []
    for line in normalize_for_lm(text).split("\n"):
        tokens = tokenize_for_lm(line, unit)
        if tokens:
            out.append(" ".join(tokens))
    return out


# --------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class KenLMTools:
    lmplz: Path
    build_binary: Path
    source: str  # where they were found: argument, environment, repository or PATH


def find_tools(tools_dir: str | os.PathLike | None = None) -> KenLMTools:
    """Locate ``lmplz`` and ``build_binary``: argument, then env ``GOVTUNE_KENLM_BIN``, then
    ``<repo>/.tools/kenlm/bin``, then ``PATH``. A folder named explicitly (argument or env)
    must hold both tools: a wrong explicit path is an error, never a silent fallback."""
    explicit: tuple[Path, str] | None = None
    if tools_dir is not None:
        explicit = (Path(tools_dir), "the tools_dir argument")
    elif os.environ.get(TOOLS_ENV):
        explicit = (Path(os.environ[TOOLS_ENV]), f"${TOOLS_ENV}")
    if explicit is not None:
        folder, origin = explicit
        found = {name: folder / name for name in ("lmplz", "build_binary")}
        for name, path in found.items():
            if not path.is_file():
                raise KenLMError(
                    f"KenLM tool {name!r} not found at {path} (folder from {origin}); {BUILD_HINT}"
                )
            if not os.access(path, os.X_OK):
                raise KenLMError(f"KenLM tool {path} (from {origin}) is not executable")
        return KenLMTools(found["lmplz"], found["build_binary"], origin)
    if (REPO_TOOLS / "lmplz").is_file() and (REPO_TOOLS / "build_binary").is_file():
        return KenLMTools(REPO_TOOLS / "lmplz", REPO_TOOLS / "build_binary", "repository")
    lmplz, build_binary = shutil.which("lmplz"), shutil.which("build_binary")
    if lmplz and build_binary:
        return KenLMTools(Path(lmplz), Path(build_binary), "PATH")
    raise KenLMError(
        f"KenLM's lmplz and build_binary were found neither in ${TOOLS_ENV}, nor in {REPO_TOOLS}, "
        f"nor on PATH; {BUILD_HINT}"
    )


def _run_tool(cmd: Sequence[str | os.PathLike], what: str) -> subprocess.CompletedProcess:
    """Run a KenLM tool; any failure becomes a KenLMError naming the tool and its stderr."""
    args = [str(c) for c in cmd]
    try:
        proc = subprocess.run(args, capture_output=True, check=False)
    except OSError as exc:  # missing, not executable, wrong architecture
        raise KenLMError(f"cannot run {args[0]} ({what}): {exc.strerror or exc}") from None
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", errors="replace").strip()
        tail = "\n".join(stderr.splitlines()[-25:]) or "(no output on stderr)"
        raise KenLMError(
            f"{Path(args[0]).name} failed with exit code {proc.returncode} while {what}\n"
            f"command: {' '.join(args)}\nstderr:\n{tail}"
        )
    return proc


# --------------------------------------------------------------------------- training


@dataclass
class KenLMModelInfo:
    """A trained model and its lineage (what the ``kenlm_models`` asset reports)."""

    lang: str
    path: str  # the binary model
    order: int
    unit: str
    ngram_counts: list[int]  # from the ARPA header, order 1 first
    n_lines: int
    n_tokens: int
    reference_sha256: str  # of the reference lines as given
    fingerprint: str  # reference + training settings: the model's data version
    training_seconds: float
    size_bytes: int
    settings: dict[str, Any] = field(default_factory=dict)
    reused: bool = False

    def to_metadata(self) -> dict[str, Any]:
        """JSON-ready fields (asset metadata, the ``<lang>.json`` lineage file)."""
        return asdict(self)

    as_dict = to_metadata

    @property
    def seconds_per_million_tokens(self) -> float:
        return self.training_seconds / max(self.n_tokens, 1) * 1e6


def model_fingerprint(lines: Sequence[str], lang: str, config: KenLMConfig) -> str:
    """Hash of the reference text and the settings that shape the model (not of memory)."""
    return _fingerprint(_sha256_lines(lines), config.training_settings(lang))


def _fingerprint(reference_sha: str, settings: Mapping[str, Any]) -> str:
    payload = json.dumps({"reference": reference_sha, **settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _sha256_lines(lines: Iterable[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


def model_paths(out_dir: str | os.PathLike, lang: str) -> tuple[Path, Path]:
    """``(<out_dir>/<lang>.binary, <out_dir>/<lang>.json)``: the model and its lineage."""
    out = Path(out_dir)
    return out / f"{lang}.binary", out / f"{lang}.json"


def parse_arpa_counts(arpa: str | os.PathLike) -> list[int]:
    """The ``ngram N=count`` lines of an ARPA header."""
    counts: dict[int, int] = {}
    with open(arpa, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if line.startswith("ngram "):
                n, _, c = line[6:].partition("=")
                counts[int(n)] = int(c)
            elif line.startswith("\\1-grams:"):
                break
    if not counts:
        raise KenLMError(f"{arpa}: no ARPA header (\\data\\ with ngram counts) found")
    return [counts[k] for k in sorted(counts)]


def train_model(
    lines: Sequence[str],
    out_dir: str | os.PathLike,
    lang: str,
    config: KenLMConfig | None = None,
    tools_dir: str | os.PathLike | None = None,
    reuse: bool = True,
) -> KenLMModelInfo:
    """Train ``<out_dir>/<lang>.binary`` from reference ``lines`` with lmplz + build_binary.

    With ``reuse``, an existing model whose fingerprint (reference + settings) matches is
    returned without retraining. Raises ``NotEnoughReferenceText`` below the configured minimum
    and ``KenLMError`` (with the tool's stderr) when a tool fails.
    """
    config = config or KenLMConfig()
    if not isinstance(lang, str) or not _LANG.match(lang):
        raise ValueError(f"lang must be a short code such as 'de' or 'zh_TW', not {lang!r}")
    lines = list(lines)
    unit = config.unit(lang)
    corpus = [t for line in lines for t in lm_lines(line, unit)]
    n_tokens = sum(line.count(" ") + 1 for line in corpus)
    if len(corpus) < config.min_reference_lines or n_tokens < config.min_reference_tokens:
        raise NotEnoughReferenceText(
            f"{lang}: {len(corpus)} reference lines / {n_tokens} tokens; at least "
            f"{config.min_reference_lines} lines and {config.min_reference_tokens} tokens are "
            "needed (add text files to the reference or lower the minimums)"
        )
    reference_sha = _sha256_lines(lines)
    settings = config.training_settings(lang)
    fingerprint = _fingerprint(reference_sha, settings)
    binary, sidecar = model_paths(out_dir, lang)
    if reuse and binary.is_file() and sidecar.is_file():
        try:
            old = KenLMModelInfo(**json.loads(sidecar.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            old = None  # unreadable lineage: retrain
        if old is not None and old.fingerprint == fingerprint:
            old.path, old.reused = str(binary), True
            return old

    tools = find_tools(tools_dir)
    binary.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".kenlm-{lang}-", dir=binary.parent) as tmp:
        text = Path(tmp) / "corpus.txt"
        text.write_text("\n".join(corpus) + "\n", encoding="utf-8")
        arpa = Path(tmp) / f"{lang}.arpa"
        cmd: list[Any] = [tools.lmplz, "-o", config.order, "-S", config.memory, "-T", f"{tmp}/"]
        cmd += ["--text", text, "--arpa", arpa]
        if config.discount_fallback:
            cmd.append("--discount_fallback")
        if config.prune:
            cmd += ["--prune", *config.prune]
        _run_tool(cmd, f"estimating the {lang} {config.order}-gram model")
        counts = parse_arpa_counts(arpa)
        staged = Path(tmp) / "model.binary"
        cmd = [tools.build_binary, "-S", config.memory, "-T", f"{tmp}/"]
        if config.quantize_bits:
            cmd += ["-q", config.quantize_bits]
        _run_tool([*cmd, config.binary_type, arpa, staged], f"binarising the {lang} model")
        os.replace(staged, binary)  # same folder: atomic, no half model
        if config.keep_arpa:
            os.replace(arpa, binary.with_suffix(".arpa"))
    info = KenLMModelInfo(
        lang=lang,
        path=str(binary),
        order=config.order,
        unit=unit,
        ngram_counts=counts,
        n_lines=len(corpus),
        n_tokens=n_tokens,
        reference_sha256=reference_sha,
        fingerprint=fingerprint,
        training_seconds=round(time.perf_counter() - start, 3),
        size_bytes=binary.stat().st_size,
        settings=settings,
    )
    _write_json_atomic(info.to_metadata(), sidecar)
    _load_cached.cache_clear()  # a retrained model at the same path must not be served stale
    return info


def train_language_model(
    lang: str,
    out_dir: str | os.PathLike,
    config: KenLMConfig | None = None,
    files: Sequence[str | os.PathLike] = (),
    tools_dir: str | os.PathLike | None = None,
    reuse: bool = True,
    **reference_options: Any,
) -> KenLMModelInfo:
    """Reference text for ``lang`` (see ``reference.reference_lines``) -> a trained model.

    Raises ``NotEnoughReferenceText`` when the language has too little: the caller records the
    reason and lets that language's documents pass through unscored.
    """
    from .reference import reference_lines

    config = config or KenLMConfig()
    lines = reference_lines(
        lang,
        config.min_reference_lines,
        files,
        min_tokens=config.min_reference_tokens,
        **reference_options,
    )
    if not lines:
        raise NotEnoughReferenceText(
            f"{lang}: fewer than {config.min_reference_lines} reference lines (shipped running "
            "text, rendered man pages, gettext catalogues and the given files together)"
        )
    return train_model(lines, out_dir, lang, config, tools_dir, reuse)


def train_language_models(
    languages: Iterable[str],
    out_dir: str | os.PathLike,
    config: KenLMConfig | None = None,
    files: Mapping[str, Sequence[str | os.PathLike]] | None = None,
    tools_dir: str | os.PathLike | None = None,
    reuse: bool = True,
) -> dict[str, KenLMModelInfo | str]:
    """One model per language (for the CLI); a language without a model maps to the reason."""
    out: dict[str, KenLMModelInfo | str] = {}
    langs = list(languages)
    for lang in tqdm(langs, desc="KenLM models", unit="lang", disable=len(langs) < 2):
        try:
            out[lang] = train_language_model(
                lang, out_dir, config, (files or {}).get(lang, ()), tools_dir, reuse
            )
        except NotEnoughReferenceText as exc:
            out[lang] = str(exc)
    return out


def find_models(directory: str | os.PathLike) -> dict[str, Path]:
    """``lang -> model`` for every ``<lang>.binary`` (or CCNet-style ``<lang>.arpa.bin``) under
    ``directory``, flat or one folder per language."""
    root = Path(directory)
    if not root.is_dir():
        raise ModelLoadError(f"KenLM model folder not found: {root}")
    found: dict[str, Path] = {}
    for path in sorted([*root.rglob("*.binary"), *root.rglob("*.arpa.bin")]):
        lang = _lineage(path).get("lang") or path.name.removesuffix(".binary").removesuffix(
            ".arpa.bin"
        )
        if lang in found:
            raise ModelLoadError(f"two models for {lang!r}: {found[lang]} and {path}")
        found[lang] = path
    return found


def _write_json_atomic(data: Mapping[str, Any], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=1, sort_keys=True)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- scoring


@dataclass
class LoadedModel:
    """A loaded KenLM model with the tokenisation unit it was trained with (from its lineage)."""

    path: Path
    model: Any  # kenlm.Model
    unit: str | None  # None: unknown (a model trained elsewhere); decided from the language
    info: dict[str, Any] = field(default_factory=dict)

    def unit_for(self, lang: str, config: KenLMConfig | None = None) -> str:
        return self.unit or (config or KenLMConfig()).unit(lang)


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Load a binary or ARPA model, and its ``.json`` lineage when present."""
    import kenlm

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"KenLM model not found: {path}")
    try:
        model = kenlm.Model(str(path))
    except Exception as exc:  # the C++ loader raises OSError, UnicodeDecodeError, ...
        raise ModelLoadError(
            f"cannot load KenLM model {path}: {type(exc).__name__}: {exc}"
        ) from None
    info = _lineage(path)
    return LoadedModel(path, model, info.get("unit"), info)


def _lineage(model_path: Path) -> dict[str, Any]:
    """The ``.json`` written next to a model by ``train_model`` ({} if absent or unreadable)."""
    sidecar = model_path.with_suffix(".json")
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@lru_cache(maxsize=32)
def _load_cached(path: str, mtime_ns: int, size: int) -> LoadedModel:
    return load_model(path)


def _load(path: str | os.PathLike) -> LoadedModel:
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise ModelLoadError(f"KenLM model not found: {p}") from None
    return _load_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)


def _as_loaded(model: Any) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str | os.PathLike):
        return _load(model)
    return LoadedModel(Path(getattr(model, "path", "") or "."), model, None)


def document_perplexity(
    model: LoadedModel | Any, text: str, lang: str, config: KenLMConfig | None = None
) -> float:
    """CCNet document perplexity: ``10 ** (-sum(line log10 p) / sum(tokens + 1))``.

    ``inf`` when the text has no token at all (nothing to score is never good text).
    """
    m = _as_loaded(model)
    return _perplexity(m.model, text, m.unit_for(lang, config))


def _perplexity(model: Any, text: str, unit: str) -> float:
    log10 = 0.0
    length = 0
    score = model.score
    for line in lm_lines(text, unit):
        log10 += score(line, bos=True, eos=True)
        length += line.count(" ") + 2  # tokens + </s>
    return 10.0 ** (-log10 / length) if length else math.inf


def score_documents(
    model: LoadedModel | Any,
    texts: Sequence[str],
    lang: str,
    config: KenLMConfig | None = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Perplexities of many documents of one language (float64, ``inf`` for empty ones)."""
    m = _as_loaded(model)
    unit = m.unit_for(lang, config)
    show = len(texts) >= 20_000 if progress is None else progress
    it = tqdm(texts, desc=f"perplexity {lang}", unit="doc", disable=not show, mininterval=2)
    return np.fromiter((_perplexity(m.model, t, unit) for t in it), float, len(texts))


def bucket_cutoffs(
    perplexities: Sequence[float] | np.ndarray, percentiles: tuple[float, float] = (30.0, 60.0)
) -> tuple[float, float]:
    """Head and tail cutoffs: the given percentiles of the finite perplexities (CCNet)."""
    values = np.asarray(perplexities, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no finite perplexity to derive bucket cutoffs from")
    head, tail = np.percentile(values, percentiles)
    return float(head), float(tail)


def assign_buckets(
    perplexities: Sequence[float] | np.ndarray, cutoffs: tuple[float, float]
) -> list[str | None]:
    """``head`` at or below the first cutoff, ``middle`` up to the second, ``tail`` above;
    ``None`` where the perplexity is missing (NaN)."""
    head, tail = cutoffs
    out: list[str | None] = []
    for p in np.asarray(perplexities, dtype=float):
        if math.isnan(p):
            out.append(None)
        elif p <= head:
            out.append("head")
        elif p <= tail:
            out.append("middle")
        else:
            out.append("tail")
    return out


def perplexity_histogram(perplexities: Sequence[float] | np.ndarray, bins: int = 20) -> dict:
    """Counts over log-spaced bins (perplexity is heavy-tailed); edges in perplexity units."""
    values = np.asarray(perplexities, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return {"counts": [], "edges": []}
    logs = np.log10(values)
    lo, hi = float(logs.min()), float(logs.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(logs, bins=bins, range=(lo, hi))
    return {"counts": counts.tolist(), "edges": [round(float(10**e), 3) for e in edges]}


def _document_languages(table: pa.Table) -> list[str | None]:
    """``lang`` from language ID, else the declared language (when LID is ablated)."""
    n = table.num_rows
    lang = table.column("lang").to_pylist() if "lang" in table.column_names else [None] * n
    declared = (
        table.column("declared_lang").to_pylist()
        if "declared_lang" in table.column_names
        else [None] * n
    )
    return [a or b or None for a, b in zip(lang, declared, strict=True)]


def _set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def _tail_details(perplexity: float, cutoffs: list[float]) -> dict[str, Any]:
    if math.isfinite(perplexity):
        return {"perplexity": round(float(perplexity), 3), "cutoff": cutoffs[1]}
    # nothing scoreable (only symbols the normalisation removes): JSON has no infinity
    return {"perplexity": None, "cutoff": cutoffs[1], "unscoreable": True}


def perplexity_stage(
    table: pa.Table,
    models: Mapping[str, str | os.PathLike],
    config: KenLMConfig | None = None,
    cutoffs: Mapping[str, tuple[float, float]] | None = None,
) -> StageResult:
    """Score every document with its language's model, bucket it, apply the policy.

    Cutoffs per language: ``cutoffs`` (argument), else ``config.fixed_cutoffs``, else the
    configured percentiles of this table's perplexities for that language (CCNet). Documents
    whose language has no model, or too few scored documents to derive cutoffs, pass through
    unlabelled (bucket null), and the metadata says why.
    """
    config = config or KenLMConfig()
    if "text" not in table.column_names or "doc_id" not in table.column_names:
        raise ValueError(
            f"perplexity_stage needs 'doc_id' and 'text' columns, got {table.column_names}"
        )
    fixed = {k: _check_cutoffs(v, f"cutoffs[{k!r}]") for k, v in (cutoffs or {}).items()}
    fixed = {**config.fixed_cutoffs, **fixed}
    n = table.num_rows
    texts = table.column("text").to_pylist()
    langs = _document_languages(table)
    ppl = np.full(n, np.nan)
    buckets: list[str | None] = [None] * n
    by_lang: dict[str | None, list[int]] = {}
    for i, lang in enumerate(langs):
        by_lang.setdefault(lang, []).append(i)

    no_model: dict[str, dict[str, Any]] = {}
    per_lang: dict[str, dict[str, Any]] = {}
    used_cutoffs: dict[str, list[float]] = {}
    for lang in sorted(by_lang, key=lambda x: x or ""):
        idx = np.array(by_lang[lang])
        key = lang or "unknown"
        path = models.get(lang) if lang else None
        if path is None:
            why = "no language known" if not lang else "no KenLM model for this language"
            no_model[key] = {"documents": int(idx.size), "reason": why}
            continue
        model = _load(path)
        values = score_documents(model, [texts[i] for i in idx], lang, config)
        ppl[idx] = values
        finite = values[np.isfinite(values)]
        info: dict[str, Any] = {
            "documents": int(idx.size),
            "unscoreable": int(idx.size - finite.size),
            "model": str(path),
            "median_perplexity": round(float(np.median(finite)), 2) if finite.size else None,
            "histogram": perplexity_histogram(values, config.histogram_bins),
        }
        if lang in fixed:
            cut, source = fixed[lang], "fixed"
        elif finite.size >= config.min_docs_for_cutoffs:
            cut, source = bucket_cutoffs(finite, config.percentiles), "percentiles"
        else:
            info["cutoff_source"] = None
            info["unbucketed_reason"] = (
                f"{finite.size} scored documents < min_docs_for_cutoffs="
                f"{config.min_docs_for_cutoffs}: too few to derive percentile cutoffs"
            )
            per_lang[lang] = info
            continue
        labels = assign_buckets(values, cut)
        for i, b in zip(idx, labels, strict=True):
            buckets[i] = b
        used_cutoffs[lang] = [round(cut[0], 3), round(cut[1], 3)]
        info["cutoffs"] = used_cutoffs[lang]
        info["cutoff_source"] = source
        info["buckets"] = {b: labels.count(b) for b in BUCKETS}
        per_lang[lang] = info

    ppl_arr = pa.array(ppl, type=pa.float32(), mask=np.isnan(ppl))
    out = _set_column(table, "perplexity", ppl_arr)
    out = _set_column(out, "quality_bucket", pa.array(buckets, type=pa.string()))
    drop = config.policy == "drop_tail"
    keep = np.array([not (drop and b == "tail") for b in buckets], dtype=bool)
    details = [None if keep[i] else _tail_details(ppl[i], used_cutoffs[langs[i]]) for i in range(n)]
    kept, rejected = split_by_mask(out, keep, STAGE, [TAIL_REASON] * n, details)
    metadata = {
        "stage": STAGE,
        "input": n,
        "kept": kept.num_rows,
        "rejected": rejected.num_rows,
        "keep_rate": round(kept.num_rows / n, 4) if n else 1.0,
        "policy": config.policy,
        "percentiles": list(config.percentiles),
        "cutoffs": used_cutoffs,
        "bucket_counts": {b: sum(1 for x in buckets if x == b) for b in BUCKETS},
        "unbucketed": sum(1 for x in buckets if x is None),
        "no_model_languages": no_model,
        "languages": per_lang,
    }
    return StageResult(kept, rejected, metadata)
