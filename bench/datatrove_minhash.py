"""datatrove's MinHash pipeline as a baseline for ``bench/scale.py``; runs in a throwaway venv.

    python3 -m venv /tmp/dt-venv
    /tmp/dt-venv/bin/pip install "datatrove==0.10.1" "xxhash<4" spacy orjson pyarrow
    /tmp/dt-venv/bin/python bench/datatrove_minhash.py CORPUS.parquet OUT_DIR

datatrove's four stages (signatures -> buckets -> clusters -> filter) with its defaults (word
5-grams, 14 buckets x 8 hashes), one task each, a whitespace word tokenizer (its default spaCy
tokenizer measured about 6x slower here) and number normalisation off. It writes
``OUT_DIR/removed.jsonl`` (one line per removed document: its id and the id of the kept
document of its cluster) and prints one JSON line with the seconds (the four stages, reading
the Parquet file included) and the peak RSS.
govtune itself never imports datatrove.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupSignature
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
)
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.text import TextNormConfig
from datatrove.utils.word_tokenizers import WordTokenizer


class Whitespace(WordTokenizer):
    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        out, pos = [], 0
        for w in text.split():
            start = text.index(w, pos)
            out.append((start, start + len(w)))
            pos = start + len(w)
        return out


def main(corpus: str, out: str) -> None:
    out_dir = Path(out)
    shutil.rmtree(out_dir, ignore_errors=True)
    work = out_dir / "work"
    folder = str(Path(corpus).parent)
    glob = Path(corpus).name
    # the generated corpora's words are "w" + digits: datatrove's number normalisation would
    # make every word the same, so it is off (every other default stays)
    config = MinhashConfig(norm_config=TextNormConfig(norm_numbers=False))

    def reader():
        return ParquetReader(folder, glob_pattern=glob, text_key="text", id_key="doc_id")

    t0 = time.perf_counter()
    steps = [
        [reader(), MinhashDedupSignature(str(work / "sigs"), config, language=Whitespace())],
        [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)],
        [
            MinhashDedupCluster(
                str(work / "buckets"), str(work / "remove"), config=config, save_cluster_id=True
            )
        ],  # fmt: skip
        [
            reader(),
            MinhashDedupFilter(
                str(work / "remove"),
                load_cluster_ids=True,
                exclusion_writer=JsonlWriter(str(work / "removed")),
            ),
            JsonlWriter(str(work / "kept")),
        ],  # fmt: skip
    ]
    for k, pipeline in enumerate(steps):
        tasks = config.num_buckets if k == 1 else 1
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=1,
                              logging_dir=str(work / f"logs{k}")).run()  # fmt: skip
    secs = time.perf_counter() - t0
    kept_of = {}
    import gzip

    for path in sorted((work / "kept").glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as fh:
            for line in fh:
                d = json.loads(line)
                cid = d["metadata"].get("minhash_cluster_id", -1)
                if cid != -1:
                    kept_of[cid] = d["id"]
    with open(out_dir / "removed.jsonl", "w") as fh:
        for path in sorted((work / "removed").glob("*.jsonl.gz")):
            with gzip.open(path, "rt") as src:
                for line in src:
                    d = json.loads(line)
                    cid = d["metadata"].get("minhash_cluster_id", -1)
                    fh.write(json.dumps({"id": d["id"], "of": kept_of.get(cid)}) + "\n")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"seconds": secs, "peak_gib": peak}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
