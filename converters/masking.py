"""Personal data -> stable placeholders before a text leaves for a hosted provider, and back.

`PiiDetector` finds personal data with Microsoft Presidio's recognizers that need no model download:
e-mail (its recognizer's domain check reads tldextract's bundled suffix list, never the network), phone
numbers (Google's libphonenumber through `phonenumbers`), IBAN and card numbers (with their checksums), IP
addresses. Presidio finds names only through an NLP model (spaCy's, a download); here a PERSON is a first
name from gender-guesser's list of about 48,000 names (a maintained data file inside its wheel) followed by
capitalised words, or a capitalised word after a title (Mr, Mrs, Dr...). What it misses is measured
in tests/test_masking.py and stated in the README.

`Masker` replaces each finding with `<KIND_n>`; the same value gets the same placeholder everywhere in
one request (the task text and its few-shot examples). `MaskedText.to_original` maps a span found in
the masked text back to the original's offsets: a span touching a placeholder covers the whole original
value, so `original[start:end]` is always what the span means.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

# the kinds PII_ENTITIES may name -> the placeholder's word
KINDS = {
    "EMAIL": "EMAIL",
    "PHONE": "PHONE",
    "IBAN": "IBAN",
    "CREDIT_CARD": "CARD",
    "IP": "IP",
    "PERSON": "PERSON",
}
_PRESIDIO = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "IBAN_CODE": "IBAN", "CREDIT_CARD": "CREDIT_CARD",
             "IP_ADDRESS": "IP"}
_TITLES = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Madam|Mme|Mlle|Herr|Frau)\.?"
_CAPITALISED = r"[A-Z][a-z\u00e0-\u00ff'\-]+"
_WORD = re.compile(r"[A-Za-z\u00c0-\u00ff][\w'\-]*", re.UNICODE)


@dataclass(frozen=True)
class Finding:
    start: int
    end: int
    kind: str  # one of KINDS
    score: float = 1.0


class PiiDetector:
    """Finds the kinds asked for (names in KINDS). Built once per process (loading the recognizers and
    the name list takes about a second); `find` is thread-safe."""

    def __init__(self, kinds: Iterable[str], phone_regions: Sequence[str] = ("US", "GB", "DE", "FR", "ES", "IT", "NL",
                                                                               "CH", "IE", "CA", "AU", "IN"),
                 threshold: float = 0.3) -> None:
        wanted = [k.strip().upper() for k in kinds if k.strip()]
        unknown = [k for k in wanted if k not in KINDS]
        if unknown:
            raise ValueError(f"PII_ENTITIES: unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
        self.kinds = tuple(dict.fromkeys(wanted))
        self.phone_regions = tuple(phone_regions)
        self.threshold = threshold
        self._lock = threading.Lock()

    @cached_property
    def _recognizers(self) -> list[Any]:
        import tldextract
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
        )

        offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # the snapshot in the wheel

        class OfflineEmail(EmailRecognizer):
            def validate_result(self, pattern_text: str) -> bool:
                return offline(pattern_text).fqdn != ""

        make: dict[str, Callable[[], Any]] = {
                "EMAIL": OfflineEmail, "PHONE": lambda: PhoneRecognizer(supported_regions=self.phone_regions),
                "IBAN": IbanRecognizer, "CREDIT_CARD": CreditCardRecognizer, "IP": IpRecognizer}
        return [make[k]() for k in self.kinds if k in make]

    @cached_property
    def _first_names(self) -> frozenset[str]:
        if "PERSON" not in self.kinds:
            return frozenset()
        from gender_guesser.detector import Detector

        names = Detector(case_sensitive=True).names
        # a first name must look like one (capitalised, at least 2 letters) and not be a common English
        # word ("The", "May", "Will" are first names in the list)
        return frozenset(n for n in names if len(n) >= 2 and n[0].isupper() and not n.isupper()
                         and n.casefold() not in self._stop_words)

    @cached_property
    def _stop_words(self) -> frozenset[str]:
        from spacy.lang.en.stop_words import STOP_WORDS  # a word list in spaCy's package: no model

        return frozenset(STOP_WORDS)

    def warm(self) -> None:
        """Load the recognizers and the name list now (not on the first task)."""
        with self._lock:
            _ = self._recognizers, self._stop_words, self._first_names

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings in text order (a longer or surer finding wins an overlap)."""
        self.warm()
        found: list[Finding] = []
        for recognizer in self._recognizers:
            for result in recognizer.analyze(text, recognizer.supported_entities, None) or []:
                kind = _PRESIDIO.get(result.entity_type)
                if kind in self.kinds and result.score >= self.threshold:
                    found.append(Finding(result.start, result.end, kind, float(result.score)))
        if "PERSON" in self.kinds:
            found.extend(self._people(text))
        kept: list[Finding] = []
        for f in sorted(found, key=lambda f: (-(f.end - f.start), -f.score, f.start)):
            if not any(f.start < k.end and k.start < f.end for k in kept):
                kept.append(f)
        return sorted(kept, key=lambda f: f.start)

    def _people(self, text: str) -> list[Finding]:
        out = [Finding(m.start(1), m.end(1), "PERSON", 0.6)
               for m in re.finditer(rf"\b{_TITLES}\s+({_CAPITALISED}(?:\s+{_CAPITALISED})*)", text)]
        words = list(_WORD.finditer(text))
        i = 0
        while i < len(words):
            if words[i].group() in self._first_names:
                j = i
                # the surname(s): following capitalised words on the same line
                while (j + 1 < len(words) and j - i < 3 and words[j + 1].group()[:1].isupper()
                       and len(words[j + 1].group()) > 1 and words[j + 1].group().casefold() not in self._stop_words
                       and text[words[j].end():words[j + 1].start()] in (" ", " -")):
                    j += 1
                out.append(Finding(words[i].start(), words[j].end(), "PERSON", 0.5))
                i = j + 1
            else:
                i += 1
        return out


@dataclass(frozen=True)
class Replacement:
    masked_start: int
    masked_end: int
    start: int  # in the original
    end: int


@dataclass(frozen=True)
class MaskedText:
    original: str
    masked: str
    replacements: tuple[Replacement, ...] = ()

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """A span of the masked text -> the same span in the original; a span that starts or ends inside
        a placeholder takes the whole original value."""
        return self._point(start, is_end=False), self._point(end, is_end=True)

    def _point(self, x: int, is_end: bool) -> int:
        shift = 0
        for r in self.replacements:
            if x <= r.masked_start:
                break
            if x < r.masked_end:
                return r.end if is_end else r.start
            shift = r.end - r.masked_end
        return x + shift


@dataclass
class Masker:
    """Placeholders for one request: the same value always gets the same `<KIND_n>`."""

    detector: PiiDetector
    placeholders: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, value) -> placeholder
    counts: dict[str, int] = field(default_factory=dict)

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        if key not in self.placeholders:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.placeholders[key] = f"<{KINDS[kind]}_{self.counts[kind]}>"
        return self.placeholders[key]

    def mask(self, text: str) -> MaskedText:
        parts: list[str] = []
        replacements: list[Replacement] = []
        position = length = 0
        for finding in self.detector.find(text):
            parts.append(text[position:finding.start])
            length += finding.start - position
            token = self.placeholder(finding.kind, text[finding.start:finding.end])
            replacements.append(Replacement(length, length + len(token), finding.start, finding.end))
            parts.append(token)
            length += len(token)
            position = finding.end
        parts.append(text[position:])
        return MaskedText(text, "".join(parts), tuple(replacements))

    def mask_value(self, value: Any) -> Any:
        """Known personal values inside a JSON-like value (a few-shot example's answer) -> their
        placeholders, longest first."""
        if isinstance(value, str):
            for (_, original), token in sorted(self.placeholders.items(), key=lambda kv: -len(kv[0][1])):
                value = value.replace(original, token)
            return value
        if isinstance(value, Mapping):
            return {k: self.mask_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.mask_value(v) for v in value]
        return value


def parse_kinds(value: str) -> tuple[str, ...]:
    """PII_ENTITIES ("EMAIL,PHONE,...") -> the kinds; raises ValueError naming an unknown one."""
    kinds = tuple(k.strip().upper() for k in value.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"PII_ENTITIES: unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    return kinds
