"""Issue 10, bug 6: every entity's score comes from the tokens of its own label, whatever the answer's
shape, or is None when they cannot be found; never a neighbour's number.

The token lists are split the way a BPE tokenizer splits such answers (label names as one token, the
JSON punctuation glued to spaces and quotes), with top_logprobs at the label positions."""

from __future__ import annotations

import json
import math

import pytest

from converters.confidence import Token, TokenProbs
from converters.regions import answer_to_prediction
from converters.task_spec import build_task_spec

NER = """<View>
  <Labels name="label" toName="text">
    <Label value="PER"/><Label value="ORG"/><Label value="LOC"/><Label value="MISC"/>
  </Labels>
  <Text name="text" value="$text"/>
</View>"""
# A CoNLL-2003-style headline: upper case, so a label name ("PER") also occurs inside an entity ("PERU").
TEXT = "SOCCER - ZAMORANO SCORES TWICE AS CHILE BEAT PERU ."


def t(text: str, p: float = 0.999, *alternatives: tuple[str, float]) -> Token:
    return Token(text, math.log(p), tuple((a, math.log(q)) for a, q in alternatives))


# The decisions, with what else the model considered at that position.
PER_KEY = t("PER", 0.62, ("PER", 0.62), ("LOC", 0.25), ("ORG", 0.08), ("M", 0.03))
LOC_KEY = t("LOC", 0.90, ("LOC", 0.90), ("ORG", 0.06), ("PER", 0.02))
PER_OF_PERU = t("PER", 0.97, ("PER", 0.97), ("LIM", 0.01))  # the first token of the text "PERU", not a label
P_PER = 0.62 / (0.62 + 0.25 + 0.08 + 0.03)
P_LOC = 0.90 / (0.90 + 0.06 + 0.02)


def scores(answer: dict, tokens: list[Token]) -> dict[str, float | None]:
    content = "".join(token.text for token in tokens)
    assert json.loads(content) == answer  # the tokens spell the answer exactly
    prediction = answer_to_prediction(build_task_spec(NER), {"text": TEXT}, answer, TokenProbs(content, tokens))
    assert len(prediction.result) == 3
    return {r["value"]["text"]: r.get("score") for r in prediction.result}


def test_label_to_texts_shape_scores_each_label_from_its_own_key() -> None:
    answer = {"label": {"PER": ["ZAMORANO"], "LOC": ["CHILE", "PERU"]}}
    tokens = [t('{"'), t("label"), t('":'), t(' {"'), PER_KEY, t('":'), t(' ["'), t("Z"), t("AM"), t("OR"),
              t("ANO"), t('"],'), t(' "'), LOC_KEY, t('":'), t(' ["'), t("CH"), t("ILE"), t('",'), t(' "'),
              PER_OF_PERU, t("U"), t('"]}}')]
    got = scores(answer, tokens)
    # The forward cursor looked for "PER" after "ZAMORANO" and found the first token of "PERU": 1.0.
    assert got["ZAMORANO"] == pytest.approx(P_PER)
    assert got["CHILE"] == pytest.approx(P_LOC)
    assert got["PERU"] == pytest.approx(P_LOC)


def test_label_before_text_items_do_not_take_the_next_entitys_label() -> None:
    answer = {"entities": [{"label": "PER", "text": "ZAMORANO"}, {"label": "LOC", "text": "CHILE"},
                           {"label": "LOC", "text": "PERU"}]}
    second_loc = t("LOC", 0.55, ("LOC", 0.55), ("PER", 0.40), ("ORG", 0.05))
    tokens = [t('{"'), t("entities"), t('":'), t(' [{"'), t("label"), t('":'), t(' "'), PER_KEY, t('",'),
              t(' "'), t("text"), t('":'), t(' "'), t("Z"), t("AM"), t("OR"), t("ANO"), t('"},'), t(' {"'),
              t("label"), t('":'), t(' "'), LOC_KEY, t('",'), t(' "'), t("text"), t('":'), t(' "'), t("CH"),
              t("ILE"), t('"},'), t(' {"'), t("label"), t('":'), t(' "'), second_loc, t('",'), t(' "'),
              t("text"), t('":'), t(' "'), PER_OF_PERU, t("U"), t('"}]}')]
    got = scores(answer, tokens)
    # The cursor gave CHILE the probability of PERU's label (0.55), and PERU none.
    assert got["ZAMORANO"] == pytest.approx(P_PER)
    assert got["CHILE"] == pytest.approx(P_LOC)
    assert got["PERU"] == pytest.approx(0.55)


def test_pairs_and_text_first_items_keep_their_scores() -> None:
    pairs = {"label": [["ZAMORANO", "PER"], ["CHILE", "LOC"], ["PERU", "LOC"]]}
    tokens = [t('{"'), t("label"), t('":'), t(' [["'), t("Z"), t("AM"), t("OR"), t("ANO"), t('",'), t(' "'),
              PER_KEY, t('"],'), t(' ["'), t("CH"), t("ILE"), t('",'), t(' "'), LOC_KEY, t('"],'), t(' ["'),
              PER_OF_PERU, t("U"), t('",'), t(' "'), LOC_KEY, t('"]]}')]
    assert scores(pairs, tokens) == pytest.approx({"ZAMORANO": P_PER, "CHILE": P_LOC, "PERU": P_LOC})


def test_a_label_that_cannot_be_placed_gets_none() -> None:
    answer = {"label": {"PER": ["ZAMORANO"], "LOC": ["CHILE", "PERU"]}}
    content = json.dumps(answer)
    # An answer that is not the one the tokens spell: its labels cannot be placed, so no score at all.
    other = content.replace("ZAMORANO", "Zamorano")
    tokens = [t(ch) for ch in other]
    prediction = answer_to_prediction(build_task_spec(NER), {"text": TEXT}, answer, TokenProbs(other, tokens))
    assert [r.get("score") for r in prediction.result] == [None, None, None]


@pytest.mark.parametrize(
    "content",
    [
        '{"a": "x \\"quoted\\" \\\\ \\u00e9 \\n", "b": [1, -2.5e3, true, null, {"c": []}], "": {}}',
        'Sure! ```json\n{"label": {"PER": ["Ann"]}}\n``` {not json}',
        '{"k": 1, "k": "last wins"}',
    ],
)
def test_locate_reads_the_answer_with_the_place_of_every_value(content: str) -> None:
    start = content.index("{")
    answer = json.JSONDecoder().raw_decode(content, start)[0]
    root = TokenProbs(content, [Token(content, 0.0)]).locate(answer)
    assert root is not None and root.value == answer

    def check(node) -> None:  # every node's text parses to its value
        assert json.loads(content[node.start:node.end]) == node.value
        for child in node.items:
            check(child)
        for key, value in node.members:
            check(key)
            check(value)

    check(root)
