"""The bundled demo corpus: real multilingual text from installed packages and the system's
gettext catalogues, plus a seeded **noise injector** that plants the problems governance
exists for, and a record of what it planted (so tests can measure each stage).

Real text: ``dataset_build`` running text (its LLM preamble stripped; the held-out reference
part is *not* used here), ``chatterbot-corpus`` dialogue lines, and translated catalogue
messages. Planted noise (the injector's record names each): exact and near duplicates (a word
edit, a moved sentence, changed numbers), wrong-language documents, untranslated catalogue
entries, boilerplate, very short and junk lines, mojibake, NUL bytes, invalid UTF-8, malformed
JSON lines and wrong field types.
"""

from __future__ import annotations

import gettext
import json
import random
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from .config import DEMO_LANGUAGES
from .contract import make_doc_id, write_parquet_atomic
from .shipped_text import chatterbot_lines, running_text
from .sources import source_uri

LOCALE_DIR = Path("/usr/share/locale")
LOCALES = {"zh": ("zh_CN", "zh_TW"), "pt": ("pt_BR", "pt")}
BOILERPLATE = (
    "Privacy policy | Cookie policy | Terms of use",
    "Please enable JavaScript to view this page.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
    "This website uses cookies to improve your experience. Accept all cookies?",
)
JUNK = (
    "#### $$$$ %%%% &&&& 1234 5678",
    "!!!! ???? .... ,,,, ;;;; ::::",
    "0101 1100 0011 1010 0110 1001",
    "=== --- +++ *** ### @@@ ^^^",
    "... ... ... ... ... ...",
    "$ 12.99 $ 14.50 $ 3.20 $ 99.00",
)
SHORT = ("ok", "…", "12", "?", "x")
# the source namespace the demo corpus is ingested under (its Dagster source partition): the
# planted record's ids are computed the way ingest computes them (DESIGN §2: relative path +
# position), so ``ingest_sources([out/"sources"], namespace=DEMO_NAMESPACE)`` reproduces them
DEMO_NAMESPACE = "demo"


@dataclass
class DemoSizes:
    running: int = 120  # running-text paragraphs per language
    dialogue: int = 60
    catalogue: int = 150
    exact_dup: int = 10
    near_dup: int = 15
    wrong_lang: int = 8
    untranslated: int = 8
    boilerplate: int = 3
    short: int = 3
    junk: int = 4
    mojibake: int = 3
    nul: int = 3


def catalogue_messages(lang: str, locale_dir: Path = LOCALE_DIR) -> list[tuple[str, str, str]]:
    """(domain, msgid, msgstr) of translated entries in the system catalogues for ``lang``."""
    out: dict[tuple[str, str], str] = {}
    for loc in LOCALES.get(lang, (lang,)):
        folder = locale_dir / loc / "LC_MESSAGES"
        for mo in sorted(folder.glob("*.mo")):
            try:
                with mo.open("rb") as fh:
                    catalog = gettext.GNUTranslations(fh)._catalog  # noqa: SLF001
            except (OSError, UnicodeDecodeError, ValueError, IndexError, struct.error):
                continue
            for key, msgstr in catalog.items():
                msgid = key[0] if isinstance(key, tuple) else key
                if isinstance(key, tuple) and key[1] != 0:
                    continue
                if not msgid or not msgstr or msgstr == msgid or "\x04" in msgid:
                    continue
                out.setdefault((mo.stem, msgid), msgstr.strip())
        if out:
            break
    return [(d, i, s) for (d, i), s in sorted(out.items())]


def _near_copy(text: str, rng: random.Random) -> tuple[str, str] | None:
    """A copy close enough to be a near duplicate at the default LSH threshold: one word edit,
    changed numbers or a moved sentence in a long paragraph; one swapped character pair in
    scripts written without spaces."""
    words = text.split(" ")
    if len(words) < 5:  # written without spaces
        if len(text) < 160:
            return None
        i = rng.randrange(len(text) - 5)
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :], "char_swap"
    if len(words) < 40:
        return None
    kinds = ["word_edit", "numbers"]
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
    if len(sentences) >= 3 and len(words) >= 80:
        kinds.append("moved_sentence")
    kind = rng.choice(kinds)
    if kind == "moved_sentence":
        return " ".join(sentences[-1:] + sentences[:-1]), kind
    if kind == "numbers" and re.search(r"\d", text):
        return re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(1, 9)), text), kind
    i = rng.randrange(len(words))
    words[i] = words[rng.randrange(len(words))]
    return " ".join(words), "word_edit"


def build_demo_corpus(
    out_dir: str | Path,
    languages: Sequence[str] = DEMO_LANGUAGES,
    seed: int = 0,
    sizes: DemoSizes | None = None,
) -> dict[str, Path]:
    """Write ``out_dir/sources/{running_text,dialogue,catalogues,noise}.jsonl`` and
    ``out_dir/planted.parquet`` (the injector's record). Same seed, same bytes."""
    sizes = sizes or DemoSizes()
    out = Path(out_dir)
    (out / "sources").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files = {
        n: out / "sources" / f"{n}.jsonl"
        for n in ("running_text", "dialogue", "catalogues", "noise")
    }
    lines: dict[str, list[bytes]] = {n: [] for n in files}
    planted: list[dict] = []
    clean: dict[str, list[tuple[str, int, str]]] = {}  # lang -> (file, line, text)

    def add(name: str, text: str, lang: str | None, raw: bytes | None = None) -> str:
        pos = len(lines[name])
        rec = {"text": text, "lang": lang} if lang else {"text": text}
        lines[name].append(raw if raw is not None else json.dumps(rec, ensure_ascii=False).encode())
        return make_doc_id(source_uri(DEMO_NAMESPACE, files[name].name), pos)

    msgids: dict[str, list[str]] = {}
    for lang in languages:
        pool = [("running_text", t) for t in rng.sample(running_text(lang, "demo"),
                min(sizes.running, len(running_text(lang, "demo"))))]  # fmt: skip
        dia = list(chatterbot_lines(lang))
        pool += [("dialogue", t) for t in rng.sample(dia, min(sizes.dialogue, len(dia)))]
        cat = catalogue_messages(lang)
        picked = rng.sample(cat, min(sizes.catalogue, len(cat)))
        pool += [("catalogues", s) for _, _, s in picked]
        msgids[lang] = sorted({i for _, i, _ in cat if len(i.split()) >= 3})
        seen: set[str] = set()
        for name, text in pool:
            if text in seen:
                continue
            seen.add(text)
            doc_id = add(name, text, lang)
            clean.setdefault(lang, []).append((name, len(lines[name]) - 1, text))
            planted.append({"doc_id": doc_id, "kind": "clean", "lang": lang, "of": None,
                            "origin": name, "detail": ""})  # fmt: skip

    def plant(kind: str, text: str, lang: str | None, of: str | None = None, detail: str = "",
              raw: bytes | None = None) -> None:  # fmt: skip
        doc_id = add("noise", text, lang, raw)
        planted.append({"doc_id": doc_id, "kind": kind, "lang": lang or "", "of": of,
                        "origin": "noise", "detail": detail})  # fmt: skip

    def clean_id(entry: tuple[str, int, str]) -> str:
        return make_doc_id(source_uri(DEMO_NAMESPACE, files[entry[0]].name), entry[1])

    for lang in languages:
        docs = clean.get(lang, [])
        running = [d for d in docs if d[0] == "running_text"]
        for d in rng.sample(docs, min(sizes.exact_dup, len(docs))):
            plant("exact_dup", d[2], lang, clean_id(d))
        near_pool = list(running)
        rng.shuffle(near_pool)
        n_near = 0
        for d in near_pool:
            if n_near >= sizes.near_dup:
                break
            copy = _near_copy(d[2], rng)
            if copy and copy[0] != d[2]:
                plant("near_dup", copy[0], lang, clean_id(d), copy[1])
                n_near += 1
        others = [o for o in languages if o != lang]
        for _ in range(sizes.wrong_lang):
            other = rng.choice(others)
            pool_other = running_text(other, "demo")  # never the KenLM reference split
            if pool_other:
                plant("wrong_lang", rng.choice(pool_other), lang, detail=other)
        if lang != "en":
            for m in rng.sample(msgids[lang], min(sizes.untranslated, len(msgids[lang]))):
                plant("untranslated", m, lang)
        for t in rng.sample(BOILERPLATE, min(sizes.boilerplate, len(BOILERPLATE))):
            plant("boilerplate", t, lang)
        for t in rng.sample(SHORT, min(sizes.short, len(SHORT))):
            plant("short", t, lang)
        for t in rng.sample(JUNK, min(sizes.junk, len(JUNK))):
            plant("junk", t, lang)
        for d in rng.sample(docs, min(sizes.mojibake, len(docs))):
            broken = d[2].encode("utf-8").decode("latin-1")
            plant("mojibake", broken, lang, clean_id(d))
        for d in rng.sample(docs, min(sizes.nul, len(docs))):
            i = rng.randrange(len(d[2]))
            plant("nul_bytes", d[2][:i] + "\x00" + d[2][i:], lang, clean_id(d))
    # malformed records: invalid UTF-8, broken JSON, wrong type, empty, NUL-only
    plant("invalid_utf8", "", None, raw=b'{"text": "caf\xe9 \xff\xfe broken", "lang": "fr"}')
    plant("invalid_utf8", "", None, raw=b'{"text": "\xc3\x28 invalid continuation"}')
    plant("malformed_json", "", None, raw=b'{"text": "unterminated')
    plant("wrong_field_type", "", None, raw=b'{"text": 12345, "lang": "de"}')
    plant("empty_text", "", None, raw=b'{"text": "   "}')
    plant("nul_only", "", None, raw=b'{"text": "\\u0000\\u0000\\u0000"}')
    for name, path in files.items():
        path.write_bytes(b"\n".join(lines[name]) + b"\n")
    record = pa.Table.from_pylist(planted)
    write_parquet_atomic(record, out / "planted.parquet")
    return {**files, "sources": out / "sources", "planted": out / "planted.parquet"}
