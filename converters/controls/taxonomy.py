"""`<Taxonomy>` on `<Text>`: one or more paths in a tree of `<Choice>`s.

The model sees each selectable node as its path, "Parent / Child / Leaf" (the schema's enum), so it
never has to rebuild a path; with `leafsOnly="true"` only leaves are selectable. Label Studio stores
`{"taxonomy": [["Parent", "Child", "Leaf"], ...]}` (each step the Choice's `alias` when it has one,
else its `value`). A `LabelSpec` of this kind is one path: `value` is the stored path as JSON (a list
of strings, so any character can appear in a step), `display` the joined path. A tree with thousands
of leaves is narrowed per task like any long label list (converters.shortlist): labels are paths, so
the shortlist applies to leaves (and to inner nodes when they are selectable).

Answer form: one path (`maxUsages="1"`) or a list of paths (Label Studio's Taxonomy allows several
selections by default; at most `maxUsages` are kept). Read too: a path written as a list of steps, and a
bare leaf name when only one path ends with it. label-studio-sdk's TaxonomyTag checks only that every
step is some node of the tree ([A, x] passes when x is a child of B); `region_errors` checks that each
path exists and is selectable. Each chosen path is scored from its own tokens among the allowed paths.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from converters.confidence import combine, item_at
from converters.controls.base import (
    LABEL_PLACEHOLDER,
    AnswerPart,
    IncompleteAnswer,
    Region,
    display_names,
    norm_label,
    region_id,
)
from converters.spec import ControlSpec, LabelSpec

SEPARATOR = " / "


def path_key(path: Sequence[str]) -> str:
    """The LabelSpec value of a stored path: its JSON (unambiguous whatever the steps contain)."""
    return json.dumps([str(step) for step in path], ensure_ascii=False)


def key_path(key: str) -> list[str]:
    """The stored path of a LabelSpec value (inverse of path_key)."""
    path = json.loads(key)
    return [str(step) for step in path]


def max_paths(control: ControlSpec) -> int | None:
    raw = control.attr("maxUsages")
    try:
        value = int(str(raw))
    except ValueError:
        return None
    return value if value > 0 else None


class TaxonomyHandler:
    kind = "taxonomy"
    tag = "Taxonomy"
    object_tags: tuple[str, ...] = ("Text", "HyperText")
    answer_aliases: tuple[str, ...] = ("taxonomy", "category", "path", "class")

    def multiple(self, attrs: Mapping[str, str]) -> bool:
        return attrs.get("maxUsages") != "1"

    def read_labels(self, element: Any, descriptions: Mapping[str, str]) -> tuple[LabelSpec, ...]:
        """Every selectable node of the tree as a path label, in document order (leaves only with
        leafsOnly="true"); the description is label_descriptions' entry for the path or the leaf, or
        the Choice's hint."""
        leafs_only = str(element.attrib.get("leafsOnly", "")).lower() == "true"
        out: list[LabelSpec] = []
        seen: set[str] = set()

        def walk(node: Any, stored: tuple[str, ...], shown: tuple[str, ...]) -> None:
            for child in node:
                if child.tag != "Choice" or "value" not in child.attrib:
                    continue
                value = str(child.attrib["value"])
                step_stored = (*stored, str(child.attrib.get("alias") or value))
                step_shown = (*shown, value)
                is_leaf = not any(grand.tag == "Choice" for grand in child)
                key = path_key(step_stored)
                if (is_leaf or not leafs_only) and key not in seen:
                    seen.add(key)
                    display = SEPARATOR.join(step_shown)
                    description = descriptions.get(display) or descriptions.get(value) or child.attrib.get("hint") or ""
                    out.append(LabelSpec(value=key, display=display, description=str(description)))
                walk(child, step_stored, step_shown)

        walk(element, (), ())
        return tuple(out)

    def spec_problem(self, control: ControlSpec) -> str | None:
        return None if control.labels else "without a tree of <Choice>s (apiUrl taxonomies are not read)"

    def answer_type(self, control: ControlSpec) -> Any:
        paths: Any = Literal[tuple(control.display_labels())]  # type: ignore[valid-type]
        return list[paths] if control.multiple else paths  # type: ignore[valid-type]

    def answer_description(self, control: ControlSpec) -> str:
        return "every path that applies" if control.multiple else "the one path that fits best"

    def placeholder(self, control: ControlSpec) -> Any:
        return [LABEL_PLACEHOLDER] if control.multiple else LABEL_PLACEHOLDER

    def prompt_lines(self, control: ControlSpec) -> tuple[str, ...]:
        which = "every category that applies" if control.multiple else "the single category that fits best"
        limit = max_paths(control)
        more = f" (at most {limit})" if control.multiple and limit else ""
        return (
            f'Task "{control.name}": choose {which}{more} from the tree below.',
            f'Answer with the full path exactly as listed ("Parent{SEPARATOR}Child").',
        )

    def lookup(self, control: ControlSpec) -> dict[str, str]:
        """Normalised path (display or stored steps) or unambiguous leaf name -> LabelSpec value."""
        table: dict[str, str] = {}
        leaves: dict[str, list[str]] = {}
        for label in control.labels:
            table.setdefault(norm_label(label.display), label.value)
            table.setdefault(norm_label(SEPARATOR.join(key_path(label.value))), label.value)
            leaves.setdefault(norm_label(label.display.split(SEPARATOR)[-1]), []).append(label.value)
        for leaf, keys in leaves.items():
            if len(keys) == 1:
                table.setdefault(leaf, keys[0])
        return table

    def regions(
        self, control: ControlSpec, data: Mapping[str, Any], part: AnswerPart, dropped: Counter
    ) -> list[Region]:
        table = self.lookup(control)
        allowed = control.display_labels()
        many = isinstance(part.value, list) and not _is_step_list(part.value, table)
        values = part.value if many else [part.value]
        limit = max_paths(control) if control.multiple else 1
        chosen: list[str] = []
        scores: list[float | None] = []
        for index, value in enumerate(values):
            if isinstance(value, list) and all(isinstance(step, str) for step in value):
                text = SEPARATOR.join(value)
            elif isinstance(value, str):
                text = value
            else:
                dropped["malformed"] += 1
                continue
            key = table.get(norm_label(text))
            if key is None:
                dropped["unknown_label"] += 1
                continue
            if key in chosen:
                continue
            if limit is not None and len(chosen) >= limit:
                dropped["too_many_paths"] += 1
                continue
            node = item_at(part.node, index) if many else part.node
            chosen.append(key)
            scores.append(part.score(node, allowed) if isinstance(value, str) else None)
        if not chosen:
            return []
        region: Region = {
            "id": region_id(control.name, *chosen),
            "from_name": control.name,
            "to_name": control.to_name,
            "type": self.kind,
            "value": {"taxonomy": [key_path(key) for key in chosen]},
        }
        score = combine(scores)
        if score is not None:
            region["score"] = score
        return [region]

    def region_errors(self, control: ControlSpec, region: Mapping[str, Any]) -> list[str]:
        if region.get("type") != self.kind:
            return []
        paths = (region.get("value") or {}).get("taxonomy")
        if not isinstance(paths, list) or not paths:
            return [f"{control.name}: taxonomy must be a non-empty list of paths"]
        known = {label.value for label in control.labels}
        errors = []
        for path in paths:
            if not isinstance(path, list) or path_key(path) not in known:
                errors.append(f"{control.name}: {path!r} is not a selectable path of the taxonomy")
        limit = max_paths(control) if control.multiple else 1
        if limit is not None and len(paths) > limit:
            errors.append(f"{control.name}: {len(paths)} paths for at most {limit}")
        return errors

    def example_answer(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> Any:
        names = display_names(control)
        chosen: list[str] = []
        for key in self._keys(control, regions):
            name = names.get(key) or SEPARATOR.join(key_path(key))
            if name not in chosen:
                chosen.append(name)
        if control.multiple:
            return chosen
        if not chosen:
            raise IncompleteAnswer(f"no path chosen for taxonomy {control.name!r}")
        return chosen[0]

    def _keys(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> list[str]:
        keys: list[str] = []
        for region in regions:
            if region.get("type") == self.kind:
                keys.extend(key for key in self.region_labels(region) if key not in keys)
        return keys

    def region_labels(self, region: Mapping[str, Any]) -> list[str]:
        paths = (region.get("value") or {}).get("taxonomy") or []
        return [path_key(path) for path in paths if isinstance(path, list)]

    def coverage_label(self, control: ControlSpec, regions: Sequence[Mapping[str, Any]]) -> str | None:
        if control.multiple:
            return None
        keys = self._keys(control, regions)
        return keys[0] if keys else None

    def groupable(self, control: ControlSpec) -> bool:
        return True


def _is_step_list(value: list[Any], table: Mapping[str, str]) -> bool:
    """A list of strings that is one path written as steps (["Parent", "Leaf"]), not several paths."""
    if len(value) < 2 or not all(isinstance(step, str) for step in value):
        return False
    joined = norm_label(SEPARATOR.join(value))
    return joined in table and not all(norm_label(step) in table for step in value)
