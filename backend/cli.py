"""`lsllm`: serve (gunicorn), predict (files).

Settings are read from the environment once, here, and passed down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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
def provider(settings: Settings) -> Iterator[Settings]:
    """Yield settings pointing at a provider: the configured one, or the embedded local model."""
    if settings.llm_base_url:
        yield settings
        return
    from backend.local_server import LocalModelServer, settings_for_local

    server = LocalModelServer(settings)
    base_url = server.start()  # raises LocalModelError with one clear line
    log.info("no LLM_BASE_URL: embedded local model %s at %s", settings.local_model_name, base_url)
    try:
        yield settings_for_local(settings, base_url)
    finally:
        server.stop()


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from gunicorn.app.base import BaseApplication

    update = {k: v for k, v in {"host": args.host, "port": args.port, "workers": args.workers,
                                 "threads": args.threads}.items() if v is not None}
    settings = settings.model_copy(update=update)  # keeps track of what the user set explicitly
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="lsllm-prom-")

    with provider(settings) as ready:

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
                self.cfg.set("accesslog", None)

            def load(self) -> Any:
                from backend.app import create_app

                return create_app(ready)

        App().run()
    return 0


def cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    from backend.app import build_model

    config = Path(args.config).read_text(encoding="utf-8")
    try:
        tasks = json.loads(Path(args.tasks).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"lsllm predict: cannot read tasks from {args.tasks}: {exc}", file=sys.stderr)
        return 2
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        print("lsllm predict: the tasks file must hold a JSON list of Label Studio tasks", file=sys.stderr)
        return 2
    if args.concurrency:
        settings = settings.model_copy(update={"llm_max_concurrency": args.concurrency})
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
        wrapped = [t if isinstance(t, dict) and "data" in t else {"data": t} for t in tasks]
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
        model.predictor.close()
    print(f"lsllm predict: {len(out) - failed} predicted, {failed} failed -> {args.out}", file=sys.stderr)
    return 0 if failed == 0 else 1


def cmd_examples_export(args: argparse.Namespace, settings: Settings) -> int:
    """Write a project's live examples as Label Studio tasks (data + the reviewed annotation)."""
    from backend.db import make_engine, migrate
    from backend.example_store import ExampleStore
    from backend.project_id import normalise_project_id

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
    pred.add_argument("--deadline", type=float, default=24 * 3600.0, help="seconds for the whole file")
    pred.set_defaults(func=cmd_predict)
    examples = sub.add_parser("examples", help="inspect the learned examples")
    examples_sub = examples.add_subparsers(dest="examples_command", required=True)
    export = examples_sub.add_parser("export", help="write a project's examples as Label Studio tasks")
    export.add_argument("--project", required=True)
    export.add_argument("--out", default="-", help="file to write, - for stdout")
    export.add_argument("--status", default="live", choices=["live", "skipped", "set_aside", "deleted"])
    export.set_defaults(func=cmd_examples_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings()
    except Exception as exc:  # pydantic ValidationError: say which variable is wrong
        print(f"lsllm: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    from backend.local_server import LocalModelError

    try:
        return int(args.func(args, settings) or 0)
    except LocalModelError as exc:
        print(f"lsllm: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
