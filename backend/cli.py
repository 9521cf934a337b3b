"""`lsllm`: serve (gunicorn), predict (files), prelabel (a Label Studio project), plan (cost before a run),
examples (export), report (live agreement as HTML).

Settings are read from the environment once, here, and passed down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backend.settings import Settings

log = logging.getLogger("lsllm")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request URL at INFO; keep provider traffic out of the default log.
    for name in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def provider(settings: Settings, keep_trying: bool = False) -> Iterator[Settings]:
    """Yield settings pointing at a provider: the configured one, or the embedded local model.

    keep_trying (serve): an embedded server that crashes or hangs at start-up does not stop the backend;
    it is restarted, and a crash loop shows in /health (503 with the reason), /metrics and one log line.
    Otherwise (predict, prelabel, plan) a server that cannot start raises LocalModelError (one line).
    """
    if settings.llm_base_url:
        yield settings
        return
    from backend.llm.local_server import LocalModelServer, settings_for_local

    server = LocalModelServer(settings)
    base_url = server.start(keep_trying=keep_trying)
    log.info("no LLM_BASE_URL: embedded local model %s at %s (%s)", settings.local_model_name, base_url,
             server.state)
    try:
        yield settings_for_local(settings, base_url, server.status_file)
    finally:
        server.stop()


def _close_worker_model(server: Any, worker: Any) -> None:
    """gunicorn's worker_exit hook, in the worker: write what is pending (response cache) and stop."""
    model = getattr(worker, "wsgi", None) and worker.wsgi.extensions.get("lsllm_model")
    if model is not None:
        model.close()


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from gunicorn.app.base import BaseApplication

    update = {k: v for k, v in {"host": args.host, "port": args.port, "workers": args.workers,
                                 "threads": args.threads}.items() if v is not None}
    settings = settings.model_copy(update=update)  # keeps track of what the user set explicitly
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="lsllm-prom-")

    with provider(settings, keep_trying=True) as ready:

        class App(BaseApplication):
            def load_config(self) -> None:
                self.cfg.set("bind", f"{ready.host}:{ready.port}")
                self.cfg.set("workers", ready.workers)
                self.cfg.set("threads", ready.threads)
                self.cfg.set("worker_class", "gthread")
                # /predict can legitimately take up to PREDICT_DEADLINE seconds
                self.cfg.set("timeout", int(ready.predict_deadline + 30))
                self.cfg.set("graceful_timeout", 10)
                # gthread re-arms a finished keep-alive connection only on its next 1 s poll tick, which
                # put 1 s stalls into /webhook under load (measured); Label Studio opens a new
                # connection per call anyway, so close after each response.
                self.cfg.set("keepalive", 0)
                self.cfg.set("loglevel", ready.log_level.lower())
                self.cfg.set("worker_exit", _close_worker_model)
                self.cfg.set("accesslog", None)

            def load(self) -> Any:
                from backend.service.app import create_app

                return create_app(ready)

        App().run()
    return 0


def _read_config_and_tasks(args: argparse.Namespace, command: str) -> tuple[str, list[dict[str, Any]]] | int:
    """(label config, tasks each with a "data" object) from --config/--tasks, or exit code 2 after one
    line saying which file is wrong."""
    try:
        config = Path(args.config).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"lsllm {command}: cannot read the label config {args.config}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        tasks = json.loads(Path(args.tasks).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"lsllm {command}: cannot read tasks from {args.tasks}: {exc}", file=sys.stderr)
        return 2
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        print(f"lsllm {command}: the tasks file must hold a JSON list of Label Studio tasks", file=sys.stderr)
        return 2
    return config, [t if isinstance(t, dict) and "data" in t else {"data": t} for t in tasks]


def cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    from backend.service.app import build_model

    files = _read_config_and_tasks(args, "predict")
    if isinstance(files, int):
        return files
    config, wrapped = files
    if args.concurrency:
        settings = settings.model_copy(update={"llm_max_concurrency": args.concurrency})
    if args.tasks_per_call:
        settings = settings.model_copy(update={"llm_tasks_per_call": args.tasks_per_call})
    if args.no_cache:
        settings = settings.model_copy(update={"llm_cache": False})
    with provider(settings) as ready:
        model = build_model(ready)
        try:
            plan = model.predictor.plan(config, json.loads(args.extra) if args.extra else None)
        except ValueError as exc:
            print(f"lsllm predict: {exc}", file=sys.stderr)
            return 2
        version = model.version_for(plan)
        results = model.predictor.predict_tasks(plan, wrapped, version, deadline_seconds=args.deadline)
        failed = 0
        out = []
        for task, result in zip(wrapped, results):
            task = dict(task)
            if result.item:
                task["predictions"] = [*(task.get("predictions") or []), result.item]
            else:
                failed += 1
            out.append(task)
        Path(args.out).write_text(json.dumps(out, ensure_ascii=False, indent=1), encoding="utf-8")
        model.close()
    print(f"lsllm predict: {len(out) - failed} predicted, {failed} failed -> {args.out}", file=sys.stderr)
    return 0 if failed == 0 else 1


def _open_project(args: argparse.Namespace, settings: Settings, command: str) -> tuple[Any, dict[str, Any]] | int:
    """(client, project) from --url/--api-key/--project (or LABEL_STUDIO_URL/_API_KEY), or exit code 2
    after one line saying what is wrong. Runs before any LLM call."""
    from backend.labelstudio.api import LabelStudioAccessError, open_project

    url = args.url or settings.label_studio_url
    key = args.api_key or (settings.label_studio_api_key.get_secret_value() if settings.label_studio_api_key else None)
    if not url or not key:
        print(f"lsllm {command}: give --url and --api-key (or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)",
              file=sys.stderr)
        return 2
    try:
        return open_project(url, key, args.project)
    except LabelStudioAccessError as exc:
        print(f"lsllm {command}: {exc}", file=sys.stderr)
        return 2


def _extra_params(args: argparse.Namespace, client: Any = None, project: dict[str, Any] | None = None
                  ) -> dict[str, Any] | None:
    """--extra when given, else the Extra params of the project's ML backend connection (if a project is
    given); None (after one line) for --extra that is not a JSON object."""
    from backend.labelstudio.api import backend_extra_params

    if args.extra:
        try:
            extra = json.loads(args.extra)
        except json.JSONDecodeError:
            extra = None
        if not isinstance(extra, dict):
            print(f"lsllm {args.command}: --extra must be a JSON object", file=sys.stderr)
            return None
        return extra
    return backend_extra_params(client, int(project["id"])) if project is not None else {}


def _prices(settings: Settings, command: str) -> Any:
    from backend.llm.pricing import PriceTable

    try:
        return PriceTable.from_setting(settings.llm_prices)
    except ValueError as exc:
        print(f"lsllm {command}: {exc}", file=sys.stderr)
        return None


def cmd_prelabel(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from backend.labelstudio.api import import_predictions, iter_task_pages
    from backend.runs.prelabel import Prelabeler, PrelabelOptions, RunTarget
    from backend.service.app import build_model

    if args.batch and not settings.llm_base_url:
        print("lsllm prelabel: --batch needs a provider with OpenAI's Batch API (set LLM_BASE_URL)", file=sys.stderr)
        return 2
    opened = _open_project(args, settings, "prelabel")
    if isinstance(opened, int):
        return opened
    client, project = opened
    prices = _prices(settings, "prelabel")
    if prices is None:
        return 2
    extra = _extra_params(args, client, project)
    if extra is None:
        return 2
    update: dict[str, Any] = {"llm_max_concurrency": args.concurrency or settings.llm_max_concurrency}
    if args.tasks_per_call:
        update["llm_tasks_per_call"] = args.tasks_per_call
    if args.no_cache:
        update["llm_cache"] = False
    settings = settings.model_copy(update=update)
    project_id = str(project["id"])
    with provider(settings) as ready:
        model = build_model(ready)
        try:
            try:
                plan = model.predictor.plan(project["label_config"], extra)
            except ValueError as exc:
                print(f"lsllm prelabel: project {project_id}: {exc}", file=sys.stderr)
                return 2
            version = model.version_for(plan, project_id)
            pages = iter_task_pages(client, int(project_id), args.page_size, view=args.view)
            first_total, first = next(pages)
            total = min(first_total, args.limit) if args.limit else first_total

            def tasks() -> Iterator[dict[str, Any]]:
                yield from first
                for _total, page in pages:
                    yield from page

            target = RunTarget(model.predictor, plan, version, project_id,
                               lambda items: import_predictions(client, int(project_id), items), prices)
            print(f"lsllm prelabel: project {project_id} ({first_total} tasks), model_version {version}, "
                  + ("through the Batch API" if args.batch else f"concurrency up to {ready.llm_max_concurrency}"),
                  file=sys.stderr)
            bar = tqdm(total=total, unit="task", dynamic_ncols=True, file=sys.stderr,
                       disable=True if args.no_progress else None, mininterval=0.5)
            if args.batch:
                stats = _run_batches(args, ready, target, bar, tasks())
            else:
                options = PrelabelOptions(limit=args.limit, in_flight=ready.llm_max_concurrency * 2,
                                          max_consecutive_failures=args.max_failures)
                stats = Prelabeler(target, options, bar).run(tasks())
            bar.close()
        finally:
            model.close()
    print("lsllm prelabel: " + stats.summary(), file=sys.stderr)
    return stats.exit_code()


def _run_batches(args: argparse.Namespace, ready: Settings, target: Any, bar: Any, tasks: Any) -> Any:
    """prelabel --batch (backend.runs.batch_api); a provider without the Batch API stops the run (exit 1)."""
    import openai

    from backend.runs.batch_api import BatchOptions, BatchRun

    state = ready.data_dir / "batches" / f"project-{target.project_id}-{target.version}.json"
    runner = BatchRun(target, BatchOptions(state, poll_seconds=args.poll_seconds, limit=args.limit), bar)
    try:
        return runner.run(tasks)
    except openai.APIError as exc:
        runner.stats.stopped = f"the provider refused the Batch API ({type(exc).__name__})"
        return runner.stats


def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    import random

    from backend.labelstudio.api import iter_task_pages
    from backend.runs.planning import estimate
    from backend.service.app import build_model

    prices = _prices(settings, "plan")
    if prices is None:
        return 2
    project_id = None
    if args.project is not None:
        opened = _open_project(args, settings, "plan")
        if isinstance(opened, int):
            return opened
        client, project = opened
        project_id = str(project["id"])
        config = project["label_config"]
        extra = _extra_params(args, client, project)
        if extra is None:
            return 2
        total, sample = next(iter_task_pages(client, int(project_id), max(1, args.sample)))
    elif args.config and args.tasks:
        files = _read_config_and_tasks(args, "plan")
        if isinstance(files, int):
            return files
        config, tasks = files
        extra = _extra_params(args)
        if extra is None:
            return 2
        total = len(tasks)
        sample = random.Random(0).sample(tasks, min(args.sample, len(tasks)))
    else:
        print("lsllm plan: give --project (with --url/--api-key) or --config and --tasks", file=sys.stderr)
        return 2
    concurrency = args.concurrency or settings.llm_max_concurrency
    settings = settings.model_copy(update={"llm_max_concurrency": concurrency})
    with provider(settings) as ready:
        model = build_model(ready)
        try:
            try:
                plan = model.predictor.plan(config, extra)
                result = estimate(model.predictor, plan, sample, total, prices, calls=args.calls,
                                  concurrency=concurrency, project_id=project_id,
                                  model_version=model.version_for(plan, project_id))
            except ValueError as exc:
                print(f"lsllm plan: {exc}", file=sys.stderr)
                return 2
        finally:
            model.close()
    print(result.table())
    return 0


def cmd_examples_export(args: argparse.Namespace, settings: Settings) -> int:
    """Write a project's live examples as Label Studio tasks (data + the reviewed annotation)."""
    from backend.store.db import make_engine, migrate
    from backend.store.example_store import ExampleStore
    from backend.store.project_id import normalise_project_id

    try:
        project_id = normalise_project_id(args.project)
    except ValueError as exc:
        print(f"lsllm examples export: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    store = ExampleStore(engine)
    tasks, offset = [], 0
    while True:
        total, rows = store.page(project_id, offset, 1000, args.status)
        for row in rows:
            tasks.append(
                {
                    "data": row.data,
                    "annotations": [{"result": row.result, "was_cancelled": False}],
                    "meta": {"lsllm_annotation_id": row.annotation_id, "lsllm_task_id": row.task_id,
                             "corrected": row.corrected},
                }
            )
        offset += len(rows)
        if not rows or offset >= total:
            break
    text = json.dumps(tasks, ensure_ascii=False, indent=1)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
    print(f"lsllm examples export: {len(tasks)} examples of project {project_id}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    """Learning curve of this backend on a labelled train/test pair (backend.runs.eval)."""
    import shlex

    from backend.runs.eval import EvalOptions, parse_points
    from backend.runs.eval_report import eval_settings, run_eval
    from backend.service.app import build_model

    try:
        options = EvalOptions(points=parse_points(args.points), n_test=args.n_test, seed=args.seed)
        Path(args.config).read_text(encoding="utf-8")
    except (ValueError, OSError) as exc:
        print(f"lsllm eval: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    settings = eval_settings(settings, Path(args.data_dir) if args.data_dir else out / "data")
    command = "lsllm eval " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in
        (("config", args.config), ("train", args.train), ("test", args.test), ("points", args.points),
         ("n_test", args.n_test), ("seed", args.seed), ("out", args.out), ("data_dir", args.data_dir)) if v is not None)
    with provider(settings) as ready:
        try:
            results = run_eval(ready, build_model, Path(args.config), Path(args.train), Path(args.test), options,
                               out, command=command, progress=not args.no_progress)
        except ValueError as exc:
            print(f"lsllm eval: {exc}", file=sys.stderr)
            return 2
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"lsllm eval: {len(results['results'])} points in {results['wall_seconds']:.0f} s -> {out}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    """A project's live agreement (reviews vs predictions) as one self-contained HTML page."""
    from backend.runs.report import render
    from backend.store.db import make_engine, migrate
    from backend.store.project_id import normalise_project_id
    from backend.store.quality_store import QualityStore

    try:
        project_id = normalise_project_id(args.project)
    except ValueError as exc:
        print(f"lsllm report: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    outcomes, versions = QualityStore(engine).outcomes(project_id)
    page = render(project_id, outcomes, versions)
    if args.out == "-":
        print(page)
    else:
        Path(args.out).write_text(page, encoding="utf-8")
    print(f"lsllm report: {len(outcomes)} reviews of project {project_id}, {len(versions)} model versions",
          file=sys.stderr)
    return 0


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    """A project's pushed retrieves and refreshes with per-task counts, or cancel one (the backend's store)."""
    from backend.store.db import make_engine, migrate
    from backend.store.jobs_store import JobsStore
    from backend.store.project_id import normalise_project_id

    if not args.project:
        print("lsllm jobs: --project ID is required", file=sys.stderr)
        return 2
    try:
        project_id = normalise_project_id(args.project)
    except ValueError as exc:
        print(f"lsllm jobs: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    store = JobsStore(engine, stale_seconds=settings.job_stale_seconds)
    if args.action == "cancel":
        job = store.cancel(project_id, args.job)
        if job is None:
            print(f"lsllm jobs cancel: no job {args.job} in project {project_id}", file=sys.stderr)
            return 1
        print(f"job {job.id}: {job.status}" + (" (cancel requested)" if job.cancel_requested else ""))
        return 0
    listed = store.list(project_id, args.limit)
    if args.json:
        print(json.dumps([job.as_json() for job in listed], indent=1))
        return 0
    print(f"{'job':>5} {'kind':9} {'status':12} {'queued':>6} {'running':>7} {'done':>6} {'failed':>6} {'skipped':>7} "
          f"{'cost USD':>9} model_version")
    for job in listed:
        print(f"{job.id:>5} {job.kind:9} {job.status:12} {job.queued:>6} {job.running:>7} {job.done:>6} "
              f"{job.failed:>6} {job.skipped:>7} {job.cost_usd:>9.4f} {job.model_version}")
    if not listed:
        print(f"(no jobs in project {project_id})", file=sys.stderr)
    return 0


def _project_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--url", help="Label Studio URL (default LABEL_STUDIO_URL)")
    p.add_argument("--api-key", help="Label Studio access token (default LABEL_STUDIO_API_KEY)")
    p.add_argument("--project", type=int, required=required, help="Label Studio project id")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lsllm", description="LLM pre-annotation backend for Label Studio")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the ML backend under gunicorn")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--threads", type=int)
    serve.set_defaults(func=cmd_serve)
    pred = sub.add_parser("predict", help="predict a file of Label Studio tasks")
    pred.add_argument("--config", required=True, help="label config XML file")
    pred.add_argument("--tasks", required=True, help="JSON list of Label Studio tasks")
    pred.add_argument("--out", required=True, help="where to write the tasks with predictions")
    pred.add_argument("--extra", help="extra_params as JSON (instructions, label_descriptions, model)")
    pred.add_argument("--concurrency", type=int, help="override LLM_MAX_CONCURRENCY")
    pred.add_argument("--no-cache", action="store_true", help="do not read or write the response cache")
    pred.add_argument("--tasks-per-call", type=int,
                      help="classification tasks per LLM call "
                      "(default LLM_TASKS_PER_CALL; <Choices>-only configs, no scores)")
    pred.add_argument("--deadline", type=float, default=24 * 3600.0, help="seconds for the whole file")
    pred.set_defaults(func=cmd_predict)
    pre = sub.add_parser("prelabel", help="predict every task of a Label Studio project and push the predictions")
    _project_args(pre)
    pre.add_argument("--view", type=int, help="only the tasks of this Data Manager view (tab id)")
    pre.add_argument("--extra", help="extra_params as JSON (default: the project's ML backend Extra params)")
    pre.add_argument("--limit", type=int, help="predict at most this many tasks in this run")
    pre.add_argument("--concurrency", type=int, help="most LLM calls at once (default LLM_MAX_CONCURRENCY); "
                     "fewer while the provider answers 429")
    pre.add_argument("--max-failures", type=int, default=20, help="stop after this many provider failures in a row")
    pre.add_argument("--page-size", type=int, default=100, help=argparse.SUPPRESS)
    pre.add_argument("--no-cache", action="store_true", help="do not read or write the response cache")
    pre.add_argument("--tasks-per-call", type=int,
                     help="classification tasks per LLM call "
                     "(default LLM_TASKS_PER_CALL; <Choices>-only configs, no scores)")
    pre.add_argument("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")
    pre.add_argument("--batch", action="store_true", help="use OpenAI's Batch API: half the price, within 24 h; "
                     "re-run to collect batches an interrupted run left running")
    pre.add_argument("--poll-seconds", type=float, default=60.0, help="how often --batch checks the batches")
    pre.set_defaults(func=cmd_prelabel)
    plan = sub.add_parser("plan", help="estimate tokens, cost and time of a run before starting it")
    _project_args(plan, required=False)
    plan.add_argument("--config", help="label config XML file (with --tasks, instead of --project)")
    plan.add_argument("--tasks", help="JSON list of Label Studio tasks (with --config)")
    plan.add_argument("--extra", help="extra_params as JSON (with --config)")
    plan.add_argument("--sample", type=int, default=50, help="tasks whose prompts are rendered and measured")
    plan.add_argument("--calls", type=int, default=3, help="real provider calls to measure tokens and latency "
                      "(cached, so the run does not pay again); 0 for none")
    plan.add_argument("--concurrency", type=int, help="calls at once for the time estimate")
    plan.set_defaults(func=cmd_plan)
    examples = sub.add_parser("examples", help="inspect the learned examples")
    examples_sub = examples.add_subparsers(dest="examples_command", required=True)
    export = examples_sub.add_parser("export", help="write a project's examples as Label Studio tasks")
    export.add_argument("--project", required=True)
    export.add_argument("--out", default="-", help="file to write, - for stdout")
    export.add_argument("--status", default="live", choices=["live", "skipped", "set_aside", "deleted"])
    export.set_defaults(func=cmd_examples_export)
    report = sub.add_parser("report", help="a project's agreement of predictions with reviewers, as an HTML page")
    report.add_argument("--project", required=True, help="Label Studio project id")
    report.add_argument("--out", default="report.html", help="file to write, - for stdout")
    report.set_defaults(func=cmd_report)
    jobs = sub.add_parser("jobs", help="a project's pushed retrieves and refreshes (per-task counts, cost); "
                          "`jobs cancel --project ID JOB` cancels one")
    jobs.add_argument("--project", help="Label Studio project id")
    jobs.add_argument("--limit", type=int, default=50, help="newest jobs to list")
    jobs.add_argument("--json", action="store_true", help="JSON, as GET /projects/<id>/jobs answers")
    jobs.set_defaults(func=cmd_jobs, action="list", job=None)
    jobs_sub = jobs.add_subparsers(dest="action")
    cancel = jobs_sub.add_parser("cancel", help="cancel a job: it stops after the batch in flight")
    cancel.add_argument("--project", default=argparse.SUPPRESS, help="Label Studio project id")
    cancel.add_argument("job", type=int, help="the job's id (lsllm jobs --project ID lists them)")
    ev = sub.add_parser("eval", help="learning curve on a labelled train/test pair: examples fed through the "
                        "webhook path, the test sample predicted by the full pipeline, scored")
    ev.add_argument("--config", required=True, help="label config XML file")
    ev.add_argument("--train", required=True, help="Label Studio tasks with annotations: the reviewed examples")
    ev.add_argument("--test", required=True, help="Label Studio tasks with annotations: scored, never learned from")
    ev.add_argument("--points", default="0,50,200,1000,all", help="numbers of examples to measure at (nested)")
    ev.add_argument("--n-test", type=int, default=200, help="test tasks (a seeded sample)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the train order and the test sample")
    ev.add_argument("--out", default="eval-out", help="directory for results.json, results.md and the plots")
    ev.add_argument("--data-dir", help="store and response cache of the eval (default OUT/data; a re-run reuses it)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings()
    except Exception as exc:  # pydantic ValidationError: say which variable is wrong
        print(f"lsllm: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    from backend.llm.local_server import LocalModelError

    try:
        return int(args.func(args, settings) or 0)
    except LocalModelError as exc:
        print(f"lsllm: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
