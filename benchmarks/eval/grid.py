"""Run `lsllm eval` on the shared datasets and collect the tables and plots.

    .venv/bin/python benchmarks/eval/grid.py --sets sst2,banking77,conll2003 --out /tmp/eval-grid
    .venv/bin/python benchmarks/eval/grid.py --collect --out /tmp/eval-grid   # tables + plots of finished runs
    .venv/bin/python benchmarks/eval/grid.py --collect --out /tmp/eval-grid --merge /tmp/eval-more
        # one curve per set from this grid's and another grid's runs (different points of the same setup)

Each set runs as its own `lsllm eval` process (the provider is whatever the environment configures:
LLM_BASE_URL, or the embedded model). Its results land in OUT/<set>/ (results.json, results.md,
plots), its store and response cache in OUT/<set>/data, so re-running the grid costs no LLM call for
what was already answered. `--collect` writes OUT/tables.md (every set's table, command and wall time)
and copies the plots to docs/eval/<set>-*.png. The datasets are read from ../shared/datasets or
LSLLM_DATASETS, never copied into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from backend.runs.eval_report import merge_results, write_results  # noqa: E402

DATASETS = Path(os.environ.get("LSLLM_DATASETS", ROOT.parent / "shared" / "datasets"))

# set -> (config, train, test, default test tasks)
SETS = {
    "sst2": ("sentiment_sst2_config.xml", "sentiment_sst2_train.json", "sentiment_sst2_test_sample500.json", 200),
    "tweeteval": ("sentiment_tweeteval_config.xml", "sentiment_tweeteval_val.json",
                  "sentiment_tweeteval_test_sample500.json", 200),
    "banking77": ("intent_banking77_config.xml", "intent_banking77_train.json",
                  "intent_banking77_test_sample500.json", 200),
    "clinc150": ("intent_clinc150_config.xml", "intent_clinc150_train.json", "intent_clinc150_test_sample500.json",
                 200),
    "conll2003": ("ner_conll2003_config.xml", "ner_conll2003_train.json", "ner_conll2003_test_sample500.json", 100),
    "wnut17": ("ner_wnut17_config.xml", "ner_wnut17_train.json", "ner_wnut17_test_sample500.json", 100),
}


def command(name: str, out: Path, points: str, n_test: int | None, seed: int) -> list[str]:
    config, train, test, default_n = SETS[name]
    return [sys.executable, "-m", "backend.cli", "eval", "--config", str(DATASETS / config),
            "--train", str(DATASETS / train), "--test", str(DATASETS / test), "--points", points,
            "--n-test", str(n_test or default_n), "--seed", str(seed), "--out", str(out / name)]


def collect(out: Path, docs: Path, merge: Sequence[Path] = ()) -> str:
    """Every finished set's table (with its command and wall time) as Markdown; plots copied to docs.
    With `merge`, a set's runs in those grids join this grid's into one curve (written to
    OUT/<set>/merged: results.json, results.md, plots)."""
    docs.mkdir(parents=True, exist_ok=True)
    parts = []
    for name in SETS:
        found = [d / name for d in (out, *merge) if (d / name / "results.json").exists()]
        if not found:
            continue
        source = found[0]
        results = json.loads((source / "results.json").read_text())
        if len(found) > 1:
            results = merge_results([json.loads((d / "results.json").read_text()) for d in found])
            source = out / name / "merged"
            source.mkdir(parents=True, exist_ok=True)
            write_results(results, source)
        parts.append(f"### {name}\n\n" + (source / "results.md").read_text())
        for plot in ("learning_curve.png", "reliability.png"):
            if (source / plot).exists():
                shutil.copy(source / plot, docs / f"{name}-{plot}")
        if not results.get("complete", True):
            parts[-1] += f"\nNot finished: points measured {[r['examples'] for r in results['results']]} " \
                         f"of {results['points']}.\n"
    text = "\n".join(parts)
    (out / "tables.md").write_text(text)
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default=",".join(SETS), help="comma-separated: " + ", ".join(SETS))
    p.add_argument("--points", default="0,50,200,1000,all")
    p.add_argument("--n-test", type=int, help="test tasks per set (default 200, NER 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/tmp/lsllm-eval-grid"))
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "eval", help="where the plots are copied")
    p.add_argument("--collect", action="store_true", help="only collect the tables and plots of finished runs")
    p.add_argument("--merge", type=Path, action="append", default=[],
                   help="another grid's --out whose runs of a set join this one's curve (repeatable)")
    args = p.parse_args()
    if not args.collect:
        for name in args.sets.split(","):
            if name not in SETS:
                p.error(f"unknown set {name!r}")
            started = time.time()
            code = subprocess.call(command(name, args.out, args.points, args.n_test, args.seed), cwd=ROOT)
            print(f"{name}: exit {code} in {time.time() - started:.0f} s", file=sys.stderr)
    print(collect(args.out, args.docs, args.merge))
    return 0


if __name__ == "__main__":
    sys.exit(main())
