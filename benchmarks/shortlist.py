"""Label shortlists on Banking77 (77 intents) and CLINC150 (151): is the gold label in the shortlist, and
how much smaller does the prompt get?

    .venv/bin/python benchmarks/shortlist.py [--datasets ../shared/datasets] [--reviewed 0,100,1000,10000]
        [--sizes 10,20,30] [--eval sample500|test] [--embeddings-base-url URL --embeddings-model NAME]

For each dataset and each N in --reviewed, N reviewed examples are drawn from the train file
(random.Random(0).sample) into a lexical index, exactly as the backend holds them, and every task of
the evaluation file (the stratified test sample by default; never the train file) goes through the
backend's own per-task code (`backend.learning.selection.choose_for_task`, FEW_SHOT_K=8): recall@K is how often
the gold label is in the K-label shortlist, also without CLINC150's out-of-scope "oos" tasks (18% of its
sample; no words describe that label, only the kNN vote can bring it). Prompt size is the rendered
messages (system with labels, few-shot turns, task) with the full label list versus the shortlist, in
tokens of the bundled SmolLM2 tokenizer (chars/4 when it is not installed), plus the JSON schema sent
with the request. With --embeddings-base-url/--embeddings-model the same runs use embeddings similarity
(any OpenAI-compatible /v1/embeddings). Data is read in place from --datasets, never copied.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.learning.selection import (  # noqa: E402
    LexicalIndex,
    ShortlistPolicy,
    choose_for_task,
    entry_to_example,
    lexical_candidates,
)
from backend.store.example_store import StoredExample  # noqa: E402
from converters.output_schema import output_json_schema  # noqa: E402
from converters.shortlist import Lexicon  # noqa: E402
from converters.task_spec import build_task_spec  # noqa: E402
from prompts import PromptRenderer  # noqa: E402

DATASETS = {"banking77": "intent_banking77", "clinc150": "intent_clinc150"}
FEW_SHOT_K = 8
TOKEN_BUDGET = 1500


def token_counter() -> tuple[str, Callable[[str], int]]:
    """The bundled SmolLM2 tokenizer (vocab only), else chars/4."""
    try:
        from llama_cpp import Llama

        from backend.llm.local_server import bundled_model_path

        model = Llama(model_path=str(bundled_model_path()), vocab_only=True, verbose=False)
        return "SmolLM2 tokens", lambda text: len(model.tokenize(text.encode("utf-8"), add_bos=False, special=False))
    except Exception:  # noqa: BLE001 - any reason the tokenizer is missing
        return "chars/4", lambda text: len(text) // 4


def gold(task: dict) -> str:
    return task["annotations"][0]["result"][0]["value"]["choices"][0]


def reviewed_rows(train: list[dict], n: int) -> list[StoredExample]:
    picked = random.Random(0).sample(range(len(train)), min(n, len(train)))
    rows = []
    for i, index in enumerate(sorted(picked)):
        task = train[index]
        result = task["annotations"][0]["result"]
        rows.append(StoredExample(i + 1, i + 1, {"text": task["data"]["text"]}, result, [gold(task)], None, None, 0.0, "live", i + 1))
    return rows


def prompt_tokens(renderer: PromptRenderer, count: Callable[[str], int], spec, entries, text: str) -> int:
    examples = [e for e in (entry_to_example(entry, spec) for entry in entries) if e is not None]
    messages = renderer.messages(spec, {"text": text}, examples, show_format=False)
    return sum(count(m["content"]) for m in messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--only", choices=sorted(DATASETS), action="append")
    parser.add_argument("--reviewed", default="0,100,1000,10000", help="N reviewed examples, comma-separated")
    parser.add_argument("--sizes", default="10,20,30", help="shortlist sizes K, comma-separated")
    parser.add_argument("--eval", choices=["sample500", "test"], default="sample500")
    parser.add_argument("--embeddings-base-url")
    parser.add_argument("--embeddings-model")
    parser.add_argument("--embeddings-api-key", default="not-needed")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    unit, count = token_counter()
    renderer = PromptRenderer("v1")
    source = None
    if args.embeddings_model:
        from backend.learning.vector_index import VectorSource
        from backend.llm.embeddings import Embedder, EmbeddingsConfig

        config = EmbeddingsConfig(args.embeddings_model, args.embeddings_base_url, args.embeddings_api_key, 60.0, 2)
        source = VectorSource(Embedder(config))
    print(f"similarity: {'embeddings ' + args.embeddings_model if source else 'lexical'}; prompt size in {unit}")
    for name in args.only or sorted(DATASETS):
        prefix = args.datasets / DATASETS[name]
        spec = build_task_spec((prefix.parent / f"{prefix.name}_config.xml").read_text())
        train = json.loads((prefix.parent / f"{prefix.name}_train.json").read_text())
        suffix = "_test_sample500.json" if args.eval == "sample500" else "_test.json"
        tasks = json.loads((prefix.parent / f"{prefix.name}{suffix}").read_text())
        labels = len(spec.controls[0].labels)
        schema_full = count(json.dumps(output_json_schema(spec)))
        print(f"\n{name}: {labels} labels, {len(tasks)} evaluation tasks ({args.eval}), train pool {len(train)}")
        print("| reviewed N | K | recall@K | recall@K without oos | prompt full | prompt shortlisted | reduction "
              "| schema full -> short | ms/task |")
        print("|---|---|---|---|---|---|---|---|---|")
        lexicon = functools.lru_cache(maxsize=8)(Lexicon)
        for n in [int(x) for x in args.reviewed.split(",")]:
            index = LexicalIndex.build(reviewed_rows(train, n))
            for size in sizes:
                policy = ShortlistPolicy(threshold=40, size=size)
                hits = in_scope = in_scope_hits = full_tokens = short_tokens = schema_short = 0
                seconds = 0.0
                for task in tasks:
                    text = task["data"]["text"]
                    started = time.perf_counter()
                    if source is not None:
                        candidates = source.candidates(f"bench-{n}" if index.entries else None, index, text, FEW_SHOT_K)
                    else:
                        candidates = lexical_candidates(index, text, FEW_SHOT_K, lexicon)
                    narrowed, chosen = choose_for_task(index.entries, candidates, spec, FEW_SHOT_K, TOKEN_BUDGET, policy)
                    seconds += time.perf_counter() - started
                    shortlist = {label.value for label in narrowed.controls[0].labels}
                    assert len(shortlist) == size and shortlist <= {label.value for label in spec.controls[0].labels}
                    hits += gold(task) in shortlist
                    if gold(task) != "oos":
                        in_scope += 1
                        in_scope_hits += gold(task) in shortlist
                    _, full_chosen = choose_for_task(index.entries, candidates, spec, FEW_SHOT_K, TOKEN_BUDGET)
                    full_tokens += prompt_tokens(renderer, count, spec, full_chosen, text)
                    short_tokens += prompt_tokens(renderer, count, narrowed, chosen, text)
                    schema_short += count(json.dumps(output_json_schema(narrowed)))
                m = len(tasks)
                print(
                    f"| {len(index.entries)} | {size} | **{hits / m:.3f}** | {in_scope_hits / in_scope:.3f} | {full_tokens / m:.0f} | "
                    f"{short_tokens / m:.0f} | {1 - short_tokens / full_tokens:.0%} | "
                    f"{schema_full} -> {schema_short / m:.0f} | {1000 * seconds / m:.2f} |"
                )


if __name__ == "__main__":
    main()
