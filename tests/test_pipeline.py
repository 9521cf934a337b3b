"""The pipeline's last guard: a region that would not validate in Label Studio is removed and counted,
never sent; the valid regions of the same task are kept."""

from __future__ import annotations

from conftest import config
from label_studio_sdk.label_interface import LabelInterface

from backend.predict.pipeline import drop_invalid_regions
from converters.task_spec import build_task_spec

TEXT = "Angela Merkel met Emmanuel Macron in Paris."


def _span(start: int, end: int, text: str, label: str) -> dict:
    return {"id": f"r{start}", "from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": start, "end": end, "text": text, "labels": [label]}}


def _setup() -> tuple[LabelInterface, object]:
    cfg = config("ner")
    return LabelInterface(cfg), build_task_spec(cfg)


def test_a_valid_prediction_passes_untouched() -> None:
    interface, spec = _setup()
    item = {"model_version": "v", "result": [_span(0, 13, "Angela Merkel", "PER"), _span(37, 42, "Paris", "LOC")]}
    kept, removed = drop_invalid_regions(interface, spec, {"text": TEXT}, item)
    assert kept is item and removed == []


def test_wrong_offsets_an_unknown_label_and_out_of_range_spans_are_removed_and_the_rest_kept() -> None:
    interface, spec = _setup()
    good = _span(18, 33, "Emmanuel Macron", "PER")
    item = {"model_version": "v", "result": [
        _span(0, 6, "Merkel", "PER"),          # text is not data[0:6]
        good,
        _span(37, 42, "Paris", "CITY"),         # not a label of the config
        _span(40, 60, "s. and beyond", "LOC"),  # past the end of the text
    ]}
    kept, removed = drop_invalid_regions(interface, spec, {"text": TEXT}, item)
    assert kept["result"] == [good]
    assert len(removed) == 3
    assert kept["model_version"] == "v"
    assert item["result"][1] is good and len(item["result"]) == 4  # the input is not mutated


def test_two_choices_on_a_single_choice_control_are_removed() -> None:
    cfg = config("sentiment")
    interface, spec = LabelInterface(cfg), build_task_spec(cfg)
    name = spec.controls[0].name
    labels = spec.controls[0].display_labels()
    region = {"id": "c", "from_name": name, "to_name": spec.controls[0].to_name, "type": "choices",
              "value": {"choices": labels[:2]}}
    kept, removed = drop_invalid_regions(interface, spec, {spec.controls[0].data_key: "fine"},
                                         {"model_version": "v", "result": [region]})
    assert kept["result"] == [] and len(removed) == 1
