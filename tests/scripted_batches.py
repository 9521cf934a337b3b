"""OpenAI's Batch API, played by the scripted provider: `POST /v1/files` (multipart upload),
`POST /v1/batches`, `GET /v1/batches/{id}` and `GET /v1/files/{id}/content`.

A batch moves validating -> in_progress -> completed on successive retrieves (so clients must poll);
when it completes, every request line is answered by the provider's responder, as a live call would be.
"""

from __future__ import annotations

import email.parser
import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

STAGES = ("validating", "in_progress", "completed")


class BatchEmulator:
    def __init__(self, answer: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]) -> None:
        """`answer(body) -> (status, response body)` for one /chat/completions request."""
        self.answer = answer
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.uploads = 0
        self.lines_answered = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def upload(self, content_type: str, raw: bytes) -> dict[str, Any]:
        message = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        content = b""
        for part in message.walk():
            if part.get_param("name", header="content-disposition") == "file":
                content = part.get_payload(decode=True) or b""
        with self._lock:
            file_id = f"file-{next(self._ids)}"
            self.files[file_id] = content
            self.uploads += 1
        return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": "requests.jsonl", "purpose": "batch", "status": "processed"}

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            batch_id = f"batch_{next(self._ids)}"
            lines = [line for line in self.files.get(body.get("input_file_id", ""), b"").decode().splitlines() if line]
            self.batches[batch_id] = {"id": batch_id, "object": "batch", "endpoint": body.get("endpoint"),
                                      "input_file_id": body.get("input_file_id"),
                                      "completion_window": body.get("completion_window"), "status": "validating",
                                      "created_at": int(time.time()), "metadata": body.get("metadata"),
                                      "output_file_id": None, "error_file_id": None,
                                      "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                                      "_lines": lines}
            return self._public(batch_id)

    def retrieve(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return None
            stage = STAGES.index(batch["status"])
            if stage < len(STAGES) - 1:
                batch["status"] = STAGES[stage + 1]
                if batch["status"] == "completed":
                    self._complete(batch)
            return self._public(batch_id)

    def content(self, file_id: str) -> bytes | None:
        with self._lock:
            return self.files.get(file_id)

    def _complete(self, batch: dict[str, Any]) -> None:
        out, failed = [], 0
        for n, line in enumerate(batch["_lines"]):
            request = json.loads(line)
            status, body = self.answer(request["body"])
            failed += status != 200
            out.append(json.dumps({"id": f"batch_req_{n}", "custom_id": request["custom_id"],
                                   "response": {"status_code": status, "request_id": f"req_{n}", "body": body},
                                   "error": None}))
            self.lines_answered += 1
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = ("\n".join(out) + "\n").encode()
        batch["output_file_id"] = file_id
        batch["request_counts"] = {"total": len(out), "completed": len(out) - failed, "failed": failed}

    def _public(self, batch_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.batches[batch_id].items() if not k.startswith("_")}
