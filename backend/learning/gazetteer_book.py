"""The gazetteers of every project, derived from the live reviewed examples and cached per example-set
version (the selection snapshot's `seq`) and label config.

Every worker and replica reads the same examples from the shared store through its selection snapshot,
so every one of them derives the same gazetteer; nothing else needs storing. A rebuild is fast (about
2 s for the 14,041 CoNLL-2003 sentences on two shared cores, benchmarks/gazetteer.py), yet not free: a
task that finds the cached gazetteer out of date uses it as is while one background thread builds the
next one, so /predict never waits for a large rebuild. A small example set (at most `sync_limit`
examples, about 0.3 s) is built on the task's thread, so a review shows in the very next prediction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from backend.learning.gazetteer import Gazetteer, GazetteerPolicy, build_gazetteer
from backend.store.example_store import StoredExample
from converters.controls import span_controls
from converters.spec import ControlSpec, TaskSpec
from prompts import SpanCandidate

log = logging.getLogger(__name__)

# (project id, config hash, control name)
_Key = tuple[str, str, str]


@dataclass(frozen=True)
class _Built:
    seq: int
    gazetteer: Gazetteer


class GazetteerBook:
    """Per-process cache of gazetteers; `examples` of a call are the selection snapshot's live rows.

    `min_examples`: a control gets no gazetteer below this many reviewed examples (STUDENT_MIN_EXAMPLES;
    with fewer, its reliability cannot be measured). `sync_limit`: a build of at most this many examples
    runs on the caller's thread; larger ones run in the background while tasks use the previous
    gazetteer (none yet: no candidates)."""

    def __init__(
        self, policy: GazetteerPolicy | None = None, min_examples: int = 1, sync_limit: int = 2000,
        show: bool = True,
    ) -> None:
        self.policy = policy or GazetteerPolicy()
        self.show = show  # candidates offered in the prompt (hint) or only to the cascade's combination
        self.min_examples = min_examples
        self.sync_limit = sync_limit
        self._built: dict[_Key, _Built] = {}
        self._building: set[_Key] = set()
        self._lock = threading.Lock()  # guards the two collections; never held while building

    def gazetteer(
        self,
        project_id: str,
        spec: TaskSpec,
        control: ControlSpec,
        seq: int,
        examples: Collection[StoredExample],
    ) -> Gazetteer | None:
        """The control's gazetteer for the example set at `seq` (or the previous one while it builds)."""
        if len(examples) < self.min_examples:
            return None
        key = (project_id, spec.config_hash, control.name)
        with self._lock:
            built = self._built.get(key)
            if built is not None and built.seq == seq:
                return built.gazetteer
            start = key not in self._building
            if start:
                self._building.add(key)
        if not start:
            return built.gazetteer if built is not None else None
        if len(examples) <= self.sync_limit:  # small: fast enough to build on the task's thread
            return self._build(key, control, seq, examples).gazetteer
        threading.Thread(
            target=self._build, args=(key, control, seq, list(examples)), name="gazetteer-build", daemon=True
        ).start()
        return built.gazetteer if built is not None else None

    def build_now(self, project_id: str, spec: TaskSpec, seq: int, examples: Collection[StoredExample]) -> None:
        """Build every span control's gazetteer for the example set at `seq` on this thread, unless it is
        built already (`lsllm eval`: every test task of a point meets the same gazetteer, as it meets
        the same student; in production a large rebuild runs in the background instead)."""
        if len(examples) < self.min_examples:
            return
        for control in span_controls(spec):
            key = (project_id, spec.config_hash, control.name)
            with self._lock:
                built = self._built.get(key)
            if built is None or built.seq != seq:
                self._build(key, control, seq, examples)

    def _build(
        self, key: _Key, control: ControlSpec, seq: int,
        examples: Collection[StoredExample],
    ) -> _Built:
        try:
            rows = [(e.data, e.result) for e in examples if e.status == "live"]
            built = _Built(seq, build_gazetteer(control, rows, self.policy))
            with self._lock:
                current = self._built.get(key)
                if current is None or current.seq <= seq:
                    self._built[key] = built
            log.debug("project %s control %s: gazetteer of %d entries at seq %d", key[0], key[2],
                      len(built.gazetteer), seq)
            return built
        except Exception:  # a bad row must not take predictions down: the task goes without candidates
            log.exception("project %s control %s: gazetteer build failed", key[0], key[2])
            return _Built(seq, Gazetteer(control.name))
        finally:
            with self._lock:
                self._building.discard(key)

    def candidates(
        self,
        project_id: str,
        spec: TaskSpec,
        seq: int,
        examples: Collection[StoredExample],
        texts: Mapping[str, str],
    ) -> tuple[SpanCandidate, ...]:
        """Every span control's gazetteer matches in this task's texts (object name -> text), and its
        runs of plain words as candidates without a label."""
        out: list[SpanCandidate] = []
        for control in span_controls(spec):
            text = texts.get(control.to_name)
            if not text:
                continue
            gazetteer = self.gazetteer(project_id, spec, control, seq, examples)
            if gazetteer is None:
                continue
            f1 = gazetteer.held_out_f1
            out += [SpanCandidate(control.name, m.start, m.end, m.text, m.label, m.score, self.show, f1)
                    for m in gazetteer.match(text)]
            # runs of plain words: label "" (never shown in the prompt; the cascade drops LLM spans inside)
            out += [SpanCandidate(control.name, s, e, text[s:e], "", 0.0, False, f1)
                    for s, e in gazetteer.plain_runs(text)]
        return tuple(out)
