"""KenLM reference text on real running text: Debian's translated man pages.

scripts/install_reference_text.sh installs the manpages-<lang> packages and renders them once
(quality_models/reference.py); models trained by the pipeline's own code on the reference must
tell held-out man-page paragraphs (never in the reference) from the same paragraphs shuffled.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from quality_models import reference
from quality_models.perplexity import (
    KenLMConfig,
    KenLMError,
    find_tools,
    load_model,
    score_documents,
    train_language_model,
)
from quality_models.reference import (
    MANPAGE_PACKAGES,
    RenderBudget,
    heldout_lines,
    manpage_files,
    manpage_paragraphs,
    manpage_text,
    read_manifest,
    reference_languages,
    reference_lines,
    reference_text_dir,
    render_language,
    render_manpage,
    render_manpages,
)
from quality_models.shipped_text import running_text

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install_reference_text.sh"
# a 4-gram (the CCNet default is 5): about 0.5 s per language on 150k tokens, same separation
CONFIG = KenLMConfig(order=4, memory="256M")
HELDOUT_DOCS = 200
MIN_RATIO = 1.5
# big manpages-<lang> packages: these reach 100k+ tokens of reference on any Debian 12 machine
BIG_PACKAGES = {"de", "en", "es", "fr", "ja", "pl", "ru", "tr", "uk", "zh"}


def _run_script(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def rendered() -> dict:
    """The render manifest; the install script runs first when nothing is rendered (CI runs it
    in make setup). A failing script fails the tests: it is part of the set-up."""
    if not read_manifest().get("languages"):
        proc = _run_script()
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        assert proc.returncode == 0, f"{SCRIPT} failed:\n{tail}"
    manifest = read_manifest()
    assert manifest.get("languages"), f"nothing rendered in {reference_text_dir()}"
    return manifest


@pytest.fixture(scope="module")
def tools():
    try:
        return find_tools()
    except KenLMError:
        pass
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_kenlm.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        pytest.skip(f"KenLM tools cannot be built here (scripts/build_kenlm.sh failed):\n{tail}")
    return find_tools()


def shuffled(text: str, unit: str, rng: random.Random) -> str:
    parts = list(text.replace(" ", "")) if unit == "char" else text.split()
    rng.shuffle(parts)
    return ("" if unit == "char" else " ").join(parts)


# --------------------------------------------------------------------------- rendering


def test_rendered_page_is_plain_utf8_paragraphs(rendered):
    files = manpage_files("de")
    assert "man1/ls.1.gz" in files, sorted(files)[:10]
    source = gzip.decompress(files["man1/ls.1.gz"].read_bytes()).decode("utf-8")
    text = render_manpage(source)
    assert "ä" in text and "ü" in text  # a UTF-8 locale: no mojibake
    assert "Ã" not in text and "\x08" not in text and "\x1b" not in text
    paragraphs = manpage_paragraphs(text)
    assert len(paragraphs) >= 10
    assert all("\n" not in p and "  " not in p and p == p.strip() for p in paragraphs)
    # the title line, headings and the synopsis are gone; option tags are cut off
    assert not any(p.startswith(("LS(1)", "BEZEICHNUNG", "ÜBERSICHT", "ls [")) for p in paragraphs)
    assert any(p.startswith("Auflistung von Informationen über die DATEIen") for p in paragraphs)
    assert not any(p.startswith("-a, --all") for p in paragraphs)
    # several pages in one groff run split back into the same pages
    cp = gzip.decompress(files["man1/cp.1.gz"].read_bytes()).decode("utf-8")
    both = render_manpages([source, cp])
    assert [manpage_paragraphs(t) for t in both] == [
        paragraphs,
        manpage_paragraphs(render_manpage(cp)),
    ]


def test_paragraph_filter_keeps_prose_only():
    rendered = "\n".join(
        [
            "LS(1)                          Handbuch                          LS(1)",
            "BESCHREIBUNG",
            "       Dies ist ein ganzer Satz mit genug Wörtern für einen Absatz.",
            "       -a, --all          zeigt auch versteckte Dateien an, die mit Punkt beginnen.",
            "       ls [OPTION]... [DATEI]...",
            "       cp /etc/passwd /tmp/x && chmod 0600 /tmp/x --force --verbose;",
            "       Siehe auch",
            "   Unterabschnitt mit einem ganzen Satz, der aber eine Überschrift ist.",
            "       这是一个足够长的中文句子，用来测试字符模型。",
        ]
    )
    assert manpage_paragraphs(rendered, "word") == [
        "Dies ist ein ganzer Satz mit genug Wörtern für einen Absatz.",
        "zeigt auch versteckte Dateien an, die mit Punkt beginnen.",
    ]
    assert manpage_paragraphs(rendered, "char") == ["这是一个足够长的中文句子，用来测试字符模型。"]


def test_unpacked_package_is_read_like_an_installed_one(tmp_path, monkeypatch):
    """Where an image excludes /usr/share/man (Debian slim), the script unpacks the .deb under
    <reference dir>/debs/<package>/: the pages are found, rendered and versioned from there."""
    pages = manpage_files("de")
    unpacked = tmp_path / "debs" / "govtune-test-manpages"
    folder = unpacked / "usr" / "share" / "man" / "de" / "man1"
    folder.mkdir(parents=True)
    for name in ("man1/ls.1.gz", "man1/cp.1.gz", "man1/cat.1.gz"):
        shutil.copy(pages[name], folder)
    (folder / "link.1.gz").symlink_to(folder / "ls.1.gz")  # an alias is not a page of its own
    (unpacked / "VERSION").write_text("1.2-3\n")
    monkeypatch.setitem(MANPAGE_PACKAGES, "de", ("govtune-test-manpages", ("de",)))
    assert sorted(manpage_files("de", tmp_path)) == [
        "man1/cat.1.gz",
        "man1/cp.1.gz",
        "man1/ls.1.gz",
    ]
    budget = RenderBudget(reference_tokens=10**6, heldout_tokens=10**6, boilerplate_pages=99)
    entry = render_language("de", tmp_path, budget, jobs=1)
    assert entry["version"] == "1.2-3" and entry["pages_rendered"] == 3
    ref = manpage_text("de", "reference", tmp_path)
    held = manpage_text("de", "heldout", tmp_path)
    assert len(ref) == entry["reference_paragraphs"] > 0
    assert len(held) == entry["heldout_paragraphs"] and not set(ref) & set(held)


# --------------------------------------------------------------------------- the cache


def test_heldout_text_is_in_no_reference_and_not_in_the_demo_corpus(rendered, demo_dir):
    demo: set[str] = set()
    for path in (demo_dir / "sources").glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                text = json.loads(line).get("text")
            except (ValueError, AttributeError):
                continue
            if isinstance(text, str):
                demo.add(reference._key(text))
    checked = 0
    for lang in rendered["languages"]:
        held = {reference._key(t) for t in heldout_lines(lang)}
        ref = {reference._key(t) for t in reference_lines(lang, 1)}
        man = {reference._key(t) for t in manpage_text(lang)}
        assert not held & ref, (lang, sorted(held & ref)[:3])
        assert not held & demo and not man & demo, (lang, sorted((held | man) & demo)[:3])
        checked += bool(held)
    assert checked >= 20


def test_reference_sizes_per_language(rendered):
    enough = reference_languages()
    rows = []
    for lang, entry in rendered["languages"].items():
        lines = reference_lines(lang, 1)
        rows.append(
            f"{lang:<3} {entry['pages_rendered']:>4}/{entry['pages_available']:<4} pages"
            f"  man-page reference {entry['reference_tokens']:>7}  held-out "
            f"{entry['heldout_tokens']:>6}  reference lines {len(lines):>5}"
            f"  {'100k+' if lang in enough else ''}"
        )
    print("\n" + "\n".join(rows))
    assert BIG_PACKAGES <= set(enough), sorted(BIG_PACKAGES - set(enough))
    # the languages with only dataset_build prose stay below (3-9k tokens)
    assert not {"ar", "hi", "th", "ko"} & set(enough)
    for lang in BIG_PACKAGES:
        entry = rendered["languages"][lang]
        assert entry["reference_tokens"] >= 100_000 and entry["heldout_paragraphs"] >= 100
        assert entry["pages_rendered"] < entry["pages_available"] or lang in {"tr"}
    # a language with a tiny package still gets a model: the catalogues make up the rest
    assert len(reference_lines("mk", CONFIG.min_reference_lines)) > len(manpage_text("mk"))
    assert running_text("mk", "reference") == []


def test_install_script_is_cached(rendered):
    proc = _run_script()
    assert proc.returncode == 0, proc.stderr
    assert "man-page packages present" in proc.stdout
    assert " 0 rendered now" in proc.stdout, proc.stdout


# --------------------------------------------------------------------------- separation


def test_models_separate_heldout_real_text_from_shuffled(rendered, tools, tmp_path):
    """For every language with man pages: median perplexity of the held-out paragraphs shuffled
    over the same paragraphs in order, with a model trained by the pipeline on the reference."""
    ratios: dict[str, float] = {}
    rows = []
    for lang in sorted(rendered["languages"]):
        held = heldout_lines(lang)[:HELDOUT_DOCS]
        if len(held) < 5:
            rows.append(f"{lang:<3} only {len(held)} held-out paragraphs: not measured")
            continue
        info = train_language_model(lang, tmp_path, CONFIG)
        model = load_model(info.path)
        rng = random.Random(0)
        clean = score_documents(model, held, lang)
        shuf = score_documents(model, [shuffled(t, model.unit, rng) for t in held], lang)
        ratios[lang] = float(np.median(shuf) / np.median(clean))
        rows.append(
            f"{lang:<3} reference {info.n_tokens:>7} tokens  held-out {len(held):>3}"
            f"  clean {np.median(clean):>8.1f}  shuffled {np.median(shuf):>9.1f}"
            f"  ratio {ratios[lang]:.2f}  shuffled worse {np.mean(shuf > clean):.2f}"
        )
    print("\n" + "\n".join(rows))
    assert len(ratios) >= 20, sorted(ratios)
    separated = [lang for lang, r in ratios.items() if r >= MIN_RATIO]
    assert len(separated) >= 0.8 * len(ratios), {k: round(v, 2) for k, v in ratios.items()}
    assert all(r > 1 for r in ratios.values()), ratios
