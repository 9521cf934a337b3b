"""Label shortlists for large label sets: the labels worth showing the model for one task.

Banking77 has 77 intents and CLINC150 151: listing them all crowds the prompt (and the JSON schema's
enum), so a control with more labels than a threshold is narrowed, per task, to the `size` most
relevant labels. Relevance, in this order:
1. the kNN vote: labels of the reviewed examples most similar to the task, weighted by similarity;
2. similarity of the task text to what the label says about itself (value, alias, hint,
   label_descriptions): lexical word overlap here, or embeddings when the caller supplies them;
3. config order, so equal scores always give the same shortlist.
The shortlisted labels keep their config order in the result. Everything downstream (prompt, schema,
answer parsing, confidence renormalisation) reads the narrowed TaskSpec, so they agree by construction.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from nltk.stem.snowball import SnowballStemmer

from converters.controls import handler_for
from converters.spec import ControlSpec, LabelSpec, TaskSpec

# label value -> score, for one control
Scores = Mapping[str, float]


@dataclass(frozen=True)
class Lead:
    """Labels a task's shortlist starts with, best first (a student's top labels). With `only`, they are
    the whole shortlist: a label set the right label is in for a known share of held-out tasks."""

    labels: tuple[str, ...] = ()
    only: bool = False


_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def label_text(label: LabelSpec) -> str:
    """What a label says about itself, as plain text: display name, stored value (alias), description."""
    parts: list[str] = []
    for part in (label.display, label.value, label.description):
        readable = " ".join(_WORD.findall(part))
        if readable and readable.casefold() not in (p.casefold() for p in parts):
            parts.append(readable)
    return ": ".join(parts)


def needs_shortlist(control: ControlSpec, threshold: int) -> bool:
    """True when the control has more labels than `threshold` (0 turns shortlisting off)."""
    return threshold > 0 and len(control.labels) > threshold


class Lexicon:
    """The stemmed words of a control's labels and their idf over the labels, built once per control.

    Words are split at underscores and camelCase and stemmed with NLTK's Snowball stemmer (arrived and
    arrival, topping and top meet); idf is over the control's labels, so a word most labels share
    ("card" in Banking77) counts for little and a word only one label has counts most."""

    def __init__(self, control: ControlSpec) -> None:
        self._stem = SnowballStemmer("english").stem
        self.words = {label.value: frozenset(self.stems(label_text(label))) for label in control.labels}
        df = Counter(w for ws in self.words.values() for w in ws)
        self.idf = {w: math.log(1.0 + len(control.labels) / n) for w, n in df.items()}

    def stems(self, text: str) -> list[str]:
        return [self._stem(part.casefold()) for chunk in _WORD.findall(text) for part in _CAMEL.split(chunk)]

    def similarity(self, text: str) -> dict[str, float]:
        """Label value -> idf-weighted overlap of the text's words with the label's, over the label's
        length (labels sharing no word are absent)."""
        task = set(self.stems(text))
        scores = {}
        for value, ws in self.words.items():
            shared = ws & task
            if shared:
                scores[value] = sum(self.idf[w] for w in shared) / math.sqrt(len(ws))
        return scores


def result_labels_of(control: ControlSpec, result: Sequence[Mapping]) -> list[str]:
    """The label values a reviewed result gives this control."""
    out: list[str] = []
    handler = handler_for(control)
    for region in result:
        if region.get("from_name") != control.name:
            continue
        for label in handler.region_labels(region):
            if label not in out:
                out.append(label)
    return out


def knn_votes(control: ControlSpec, neighbours: Iterable[tuple[float, Sequence[Mapping]]]) -> dict[str, float]:
    """Label value -> summed similarity of the neighbours (similarity, reviewed result) that carry it."""
    votes: dict[str, float] = {}
    for weight, result in neighbours:
        if weight <= 0:
            continue
        for label in result_labels_of(control, result):
            votes[label] = votes.get(label, 0.0) + weight
    return votes


def rank_labels(control: ControlSpec, votes: Scores, similarity: Scores) -> list[LabelSpec]:
    """All labels, most relevant first: vote, then text similarity, then config order."""
    order = {label.value: i for i, label in enumerate(control.labels)}
    return sorted(
        control.labels,
        key=lambda label: (-votes.get(label.value, 0.0), -similarity.get(label.value, 0.0), order[label.value]),
    )


def shortlist_control(control: ControlSpec, votes: Scores, similarity: Scores, size: int) -> ControlSpec:
    """The control with only its `size` most relevant labels, kept in config order."""
    keep = {label.value for label in rank_labels(control, votes, similarity)[:size]}
    return replace(control, labels=tuple(label for label in control.labels if label.value in keep))


def shortlist_spec(
    spec: TaskSpec,
    threshold: int,
    size: int,
    votes: Callable[[ControlSpec], Scores],
    similarity: Callable[[ControlSpec], Scores],
    size_of: Callable[[ControlSpec], int] | None = None,
) -> TaskSpec:
    """The spec for one task: every control above `threshold` labels narrowed to `size` labels (or
    `size_of(control)` when given).

    `votes` and `similarity` are asked only for controls that are narrowed. Returns `spec` itself
    when nothing needs narrowing."""
    if not any(needs_shortlist(c, threshold) for c in spec.controls):
        return spec
    controls = tuple(
        shortlist_control(c, votes(c), similarity(c), size_of(c) if size_of else size)
        if needs_shortlist(c, threshold) else c
        for c in spec.controls
    )
    return replace(spec, controls=controls)


def result_fits(spec: TaskSpec, result: Sequence[Mapping]) -> bool:
    """True when every label the result gives a control of `spec` is among that control's labels
    (a few-shot example must not answer with a label the prompt does not list)."""
    for control in spec.controls:
        allowed = {label.value for label in control.labels}
        if any(label not in allowed for label in result_labels_of(control, result)):
            return False
    return True
