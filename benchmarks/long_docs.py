"""Long documents, measured.

    .venv/bin/python benchmarks/long_docs.py ner [--docs 3] [--chars 40000]
    .venv/bin/python benchmarks/long_docs.py choices [--docs 200] [--pad 4]
    .venv/bin/python benchmarks/long_docs.py local [--chars 12000]

ner: documents built by joining consecutive CoNLL-2003 test sentences (one per line, a blank line every
12), sent through a scripted provider (tests/long_docs_provider.py: a real HTTP server) that answers the
gold entities of the text it is given, cut at its answer cap (LLM_MAX_TOKENS), and refuses a prompt over
its context (--context tokens). Span recall against the gold, for the same sentences sent one by one,
each whole document in one call, and each document chunked (backend.predict.chunked); invalid regions
are counted by the pipeline (lsllm_invalid_predictions).

choices: SST-2 test sentences hidden in unrelated news (CoNLL sentences) so that the text is --pad times
the embedded model's classification budget, at a random place. The provider's "model" is a real trained
classifier, WordLlama embeddings + logistic regression fitted on 4,000 SST-2 training sentences, which
reads the text it is given (mean of its token embeddings, so unrelated text dilutes it, as attention
over a long context does). Accuracy of: the sentence alone, the head of the text cut to the budget,
LONG_CHOICES=select (head, tail, sentences nearest the labels) and LONG_CHOICES=vote (every chunk,
votes combined by their scores).

local: the embedded SmolLM2-135M (LOCAL_N_CTX 4096) on a CoNLL document longer than its context: calls,
refused calls, answered chunks and span recall (a 135M model's recall is low; the point is that the task
is answered, not refused and asked again forever).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import scripted_provider  # noqa: E402
from long_docs_provider import CONLL_CONFIG, DATASETS, GoldProvider, conll_sentences, join_document  # noqa: E402
from scripted_provider import Reply, ScriptedProvider, last_user_text  # noqa: E402

from backend.predict.chunked import choices_budget, ner_budget  # noqa: E402
from backend.service.app import build_model  # noqa: E402
from backend.settings import Settings  # noqa: E402


def _settings(base_url: str, **update: Any) -> Settings:
    values: dict[str, Any] = {"llm_base_url": base_url, "llm_api_key": "sk-bench", "llm_model": "scripted",
                              "llm_cache": False, "llm_logprobs": False, "llm_max_concurrency": 4,
                              "data_dir": Path(tempfile.mkdtemp(prefix="lsllm-long-"))}
    values.update(update)
    return Settings.model_validate(values)


def _spans(item: Any) -> set[tuple[int, int, str]]:
    if not item:
        return set()
    return {(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in item["result"]
            if "start" in r.get("value", {})}


def _run(settings: Settings, config: str, tasks: list[dict[str, Any]]) -> tuple[list[Any], float, float]:
    model = build_model(settings)
    try:
        plan = model.predictor.plan(config)
        invalid_before = model.metrics.invalid_predictions._value.get()
        started = time.perf_counter()
        results = model.predictor.predict_tasks(plan, tasks, "bench", deadline_seconds=24 * 3600)
        seconds = time.perf_counter() - started
        invalid = model.metrics.invalid_predictions._value.get() - invalid_before
    finally:
        model.close()
    return results, seconds, invalid


def documents(n: int, chars: int) -> list[tuple[list[Any], str, list[tuple[int, int, str]]]]:
    """n documents of about `chars` characters from consecutive test sentences (disjoint)."""
    sentences = conll_sentences()
    out, i = [], 0
    for _ in range(n):
        chosen, size = [], 0
        while size < chars and i < len(sentences):
            chosen.append(sentences[i])
            size += len(sentences[i].text) + 1
            i += 1
        text, gold = join_document(chosen)
        out.append((chosen, text, gold))
    return out


def bench_ner(args: argparse.Namespace) -> None:
    docs = documents(args.docs, args.chars)
    config = CONLL_CONFIG.read_text()
    gold_provider = GoldProvider([s for chosen, _, _ in docs for s in chosen], context_tokens=args.context)
    with ScriptedProvider(gold_provider) as server:
        base = _settings(server.base_url, llm_max_tokens=args.max_tokens)
        print(f"{len(docs)} documents: {[len(t) for _, t, _ in docs]} characters, "
              f"{[len(g) for _, _, g in docs]} gold entities; provider context {args.context} tokens, answer cap "
              f"{args.max_tokens} tokens; chunk budget {ner_budget(base)} characters")
        print("| mode | calls | refused | answers cut at the cap | span recall | precision | invalid regions | s |")
        print("|---|---|---|---|---|---|---|---|")
        rows = {}
        # sentence by sentence: every sentence its own task
        found = total = 0
        gold_all = pred_all = 0
        calls, refused, truncated = len(server.requests), gold_provider.refused, gold_provider.truncated
        seconds = invalid = 0.0
        for chosen, _, _ in docs:
            tasks = [{"id": k, "data": {"text": s.text}} for k, s in enumerate(chosen)]
            results, secs, bad = _run(base, config, tasks)
            seconds += secs
            invalid += bad
            for s, r in zip(chosen, results):
                got = _spans(r.item)
                found += len(got & set(s.entities))
                total += len(s.entities)
                pred_all += len(got)
        gold_all = total
        rows["sentence by sentence"] = found / total
        _row("sentence by sentence", server, gold_provider, calls, refused, truncated, found, gold_all, pred_all,
             invalid, seconds)
        for mode, update in (("whole document, one call", {"chunk_chars": 10**7}), ("chunked", {})):
            calls, refused, truncated = len(server.requests), gold_provider.refused, gold_provider.truncated
            tasks = [{"id": k, "data": {"text": text}} for k, (_, text, _) in enumerate(docs)]
            results, seconds, invalid = _run(base.model_copy(update=update), config, tasks)
            found = pred = 0
            for (_, _, gold), r in zip(docs, results):
                got = _spans(r.item)
                found += len(got & set(gold))
                pred += len(got)
            rows[mode] = found / gold_all
            _row(mode, server, gold_provider, calls, refused, truncated, found, gold_all, pred, invalid, seconds)
        ratio = rows["chunked"] / rows["sentence by sentence"]
        print(f"\nchunked recall / sentence-by-sentence recall = {ratio:.4f} (goal >= 0.99)")


def _row(mode: str, server: ScriptedProvider, gp: GoldProvider, calls: int, refused: int, truncated: int,
         found: int, gold: int, predicted: int, invalid: float, seconds: float) -> None:
    precision = found / predicted if predicted else 0.0
    print(f"| {mode} | {len(server.requests) - calls} | {gp.refused - refused} | {gp.truncated - truncated} | "
          f"{found / gold:.4f} ({found}/{gold}) | {precision:.4f} | {invalid:.0f} | {seconds:.1f} |")


# --- long classification -------------------------------------------------------------------------------
class SentimentReader:
    """The provider's classifier: WordLlama embeddings + logistic regression fitted on SST-2 train (negative,
    positive) and on CoNLL-2003 *train* sentences (a third class: unrelated news; the padding comes from
    the test split). It reads the text it is given sentence by sentence (one per line) and answers the
    sentiment of the sentence most like a review, as a reader asked for the text's sentiment ignores
    unrelated news; the answer's probability is P(label) + P(unrelated)/2 of that sentence (so about 0.5
    when the text holds no review), which LONG_CHOICES=vote weighs the chunks by."""

    def __init__(self, n_train: int = 20000) -> None:
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        from backend.llm.local_embeddings import LocalEmbedder

        rows = json.loads((DATASETS / "sentiment_sst2_train.json").read_text())
        random.Random(0).shuffle(rows)
        rows = rows[:n_train]
        news = [r["data"]["text"] for r in json.loads((DATASETS / "ner_conll2003_train.json").read_text())
                if len(r["data"]["text"]) > 40]
        random.Random(0).shuffle(news)
        news = news[: n_train // 2]
        self.embedder = LocalEmbedder()
        x = self.embedder.embed([r["data"]["text"] for r in rows] + news)
        y = [r["annotations"][0]["result"][0]["value"]["choices"][0] for r in rows] + ["unrelated"] * len(news)
        self.model = LogisticRegression(max_iter=3000, C=4.0).fit(x, y)
        self.classes = [str(c) for c in self.model.classes_]
        self.np = np

    def __call__(self, body: dict[str, Any]) -> Reply:
        lines = [s for s in last_user_text(body).replace(" [...] ", "\n").split("\n") if s.strip()] or [""]
        probs = self.model.predict_proba(self.embedder.embed(lines))
        unrelated = self.classes.index("unrelated")
        best = int(self.np.argmin(probs[:, unrelated]))  # the most review-like sentence
        row = probs[best]
        label = max((c for c in range(len(self.classes)) if c != unrelated), key=lambda c: row[c])
        p = min(max(float(row[label] + row[unrelated] / 2), 1e-6), 1 - 1e-6)
        other = next(c for c in range(len(self.classes)) if c not in (label, unrelated))
        reply = Reply(content=json.dumps({"sentiment": self.classes[label]}), logprob=math.log(p))
        # the label token's top alternatives, as a real provider sends them (the scripted server sends none)
        reply.alternatives = {self.classes[label]: [(self.classes[label], math.log(p)),  # type: ignore[attr-defined]
                                                    (self.classes[other], math.log(1 - p))]}
        return reply


def _completion_with_alternatives(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    out = _plain_completion(body, reply)
    alternatives = getattr(reply, "alternatives", {})
    for token in (out["choices"][0].get("logprobs") or {}).get("content") or []:
        if token["token"] in alternatives:
            token["top_logprobs"] = [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                     for t, lp in alternatives[token["token"]]]
    return out


_plain_completion = scripted_provider.completion
scripted_provider.completion = _completion_with_alternatives


def bench_choices(args: argparse.Namespace) -> None:
    rng = random.Random(1)
    rows = json.loads((DATASETS / "sentiment_sst2_test.json").read_text())
    rng.shuffle(rows)
    rows = rows[: args.docs]
    config = (DATASETS / "sentiment_sst2_config.xml").read_text()
    padding = [s.text for s in conll_sentences() if len(s.text) > 40]
    reader = SentimentReader()
    with ScriptedProvider(reader) as server:
        # the embedded model's budget: what a small context allows
        base = _settings(server.base_url, llm_logprobs=True, local_n_ctx=4096, llm_context_tokens=4096)
        budget = choices_budget(base)
        docs = []
        for row in rows:
            sentence = row["data"]["text"]
            filler: list[str] = []
            while sum(len(f) + 1 for f in filler) < args.pad * budget:
                filler.append(rng.choice(padding))
            filler.insert(rng.randrange(len(filler) + 1), sentence)
            docs.append((sentence, "\n".join(filler), row["annotations"][0]["result"][0]["value"]["choices"][0]))
        print(f"{len(docs)} SST-2 test sentences, each hidden in ~{args.pad * budget:,} characters of CoNLL news; "
              f"classification budget {budget:,} characters")
        print("| what the provider is given | calls | accuracy | s |")
        print("|---|---|---|---|")
        modes = [
            ("the sentence alone (upper bound)", [s for s, _, _ in docs], {}),
            ("the head of the text, cut to the budget", [t[:budget] for _, t, _ in docs], {}),
            ("LONG_CHOICES=select (head, tail, nearest sentences)", [t for _, t, _ in docs],
             {"long_choices": "select"}),
            ("LONG_CHOICES=vote (every chunk, votes by score)", [t for _, t, _ in docs], {"long_choices": "vote"}),
        ]
        for name, texts, update in modes:
            calls = len(server.requests)
            tasks = [{"id": k, "data": {"text": t}} for k, t in enumerate(texts)]
            results, seconds, _ = _run(base.model_copy(update=update), config, tasks)
            correct = sum(1 for (_, _, gold), r in zip(docs, results)
                          if r.item and r.item["result"] and r.item["result"][0]["value"]["choices"] == [gold])
            print(f"| {name} | {len(server.requests) - calls} | {correct / len(docs):.3f} | {seconds:.1f} |")


# --- the embedded model ------------------------------------------------------------------------------
def bench_local(args: argparse.Namespace) -> None:
    from backend.cli import provider

    (chosen, text, gold), = documents(1, args.chars)
    config = CONLL_CONFIG.read_text()
    base = Settings().model_copy(update={"data_dir": Path(tempfile.mkdtemp(prefix="lsllm-long-")), "llm_cache": False,
                                         "llm_base_url": None})
    with provider(base) as ready:
        budget = ner_budget(ready)
        print(f"embedded {ready.llm_model}, LOCAL_N_CTX {ready.local_n_ctx}: a document of {len(text):,} characters "
              f"({len(gold)} gold entities), chunk budget {budget:,} characters")
        for mode, update in (("whole document, one call", {"chunk_chars": 10**7}), ("chunked", {})):
            model = build_model(ready.model_copy(update=update))
            try:
                plan = model.predictor.plan(config)
                started = time.perf_counter()
                result = model.predictor.predict_tasks(plan, [{"id": 1, "data": {"text": text}}], "bench",
                                                       deadline_seconds=24 * 3600)[0]
                seconds = time.perf_counter() - started
                calls = {k[0]: v._value.get() for k, v in model.metrics.llm_calls._metrics.items()}
            finally:
                model.close()
            got = _spans(result.item)
            print(f"{mode}: reason {result.reason}, calls {calls}, {len(got)} spans, "
                  f"recall {len(got & set(gold)) / len(gold):.3f}, {seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    ner = sub.add_parser("ner")
    ner.add_argument("--docs", type=int, default=3)
    ner.add_argument("--chars", type=int, default=40_000)
    ner.add_argument("--context", type=int, default=16_000, help="the provider's context in tokens")
    ner.add_argument("--max-tokens", type=int, default=1024)
    choices = sub.add_parser("choices")
    choices.add_argument("--docs", type=int, default=200)
    choices.add_argument("--pad", type=float, default=4.0, help="text length in classification budgets")
    local = sub.add_parser("local")
    local.add_argument("--chars", type=int, default=12_000)
    args = parser.parse_args()
    import logging

    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    {"ner": bench_ner, "choices": bench_choices, "local": bench_local}[args.what](args)


if __name__ == "__main__":
    main()
