"""The decision form's vocabulary and its checks, in the nurse's words.

The server validates every decision (:func:`~.decisions.validate_decision`); its messages name
database fields (``previously_known``, ``levels.0.grade``). Before a save, the app checks the
form here and says what is missing the way the form asks it ("Was it already known?: choose
one answer"), one line per problem, so the nurse sees every gap at once and knows where to
look. :func:`friendly` translates whatever the server still refuses into the same words.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as W

from fracture_qi.adjudication.decisions import Action, Decision, PreviouslyKnown
from fracture_qi.screening.types import LEVELS

DECISION_LABELS = [
    ("Fracture confirmed", Decision.CONFIRMED.value),
    ("Not confirmed", Decision.NOT_CONFIRMED.value),
    ("Indeterminate", Decision.INDETERMINATE.value),
    ("Not assessable", Decision.NOT_ASSESSABLE.value),
]
KNOWN_LABELS = [
    ("New (not known)", PreviouslyKnown.NONE.value),
    ("Reported by radiology", PreviouslyKnown.REPORTED.value),
    ("Known to FLS", PreviouslyKnown.KNOWN_FLS.value),
]
ACTION_LABELS = [
    ("- choose -", ""),
    ("Refer to FLS clinic", Action.REFER_FLS.value),
    ("Already on therapy", Action.ON_THERAPY.value),
    ("Not appropriate (give reason)", Action.NOT_APPROPRIATE.value),
    ("Deceased", Action.DECEASED.value),
]
GRADE_LABELS = [("1 mild (20-25%)", 1), ("2 moderate (25-40%)", 2), ("3 severe (>40%)", 3)]

#: how the form names each field of a decision (the question it asks)
FIELD_LABELS: dict[str, str] = {
    "decision": "Decision",
    "levels": "Fractured vertebrae",
    "previously_known": "Was it already known?",
    "action": "What happens next?",
    "not_assessable_reason": "Why the images cannot be assessed",
    "action_reason": "Why a referral is not appropriate",
    "note": "Note",
    "read_number": "Read",
    "study_id": "Case",
    "worklist_item_id": "Case",
    "supersedes": "Correction",
}


class LevelRow:
    """One fractured vertebra in the form: level, grade, a remove button, and (for a row
    copied from the AI) which vertebra the AI meant."""

    def __init__(self, on_remove: Callable[[LevelRow], None], level: str | None = None,
                 grade: int | None = None, ai_ident: str | None = None) -> None:
        self.level = W.Dropdown(options=[("level", "")] + [(lv, lv) for lv in LEVELS],
                                value=level if level in LEVELS else "",
                                layout=W.Layout(width="90px"))
        self.level.add_class("fqi-level")
        self.grade = W.Dropdown(options=[("grade", 0)] + GRADE_LABELS,
                                value=grade if grade in (1, 2, 3) else 0,
                                layout=W.Layout(width="170px"))
        self.grade.add_class("fqi-grade")
        self.remove = W.Button(description="Remove", layout=W.Layout(width="80px"),
                               tooltip="Take this vertebra off the decision")
        self.remove.on_click(lambda _b: on_remove(self))
        self.ai_ident = ai_ident
        hint = (f"<span class='fqi-ai-ident' title='The AI numbered this vertebra from the top "
                f"of the image without naming its level'>AI {ai_ident}</span>"
                if ai_ident and ai_ident not in LEVELS else "")
        self.hint = W.HTML(hint)
        self.box = W.HBox([self.level, self.grade, self.remove, self.hint])

    def value(self) -> dict[str, Any]:
        return {"level": self.level.value, "grade": self.grade.value}

    def name(self, i: int) -> str:
        """How a message names this row: "Vertebra 2 (AI #3)"."""
        return f"Vertebra {i + 1}" + (f" (AI {self.ai_ident})"
                                      if self.ai_ident and self.ai_ident not in LEVELS else "")


def form_problems(decision: str | None, rows: Sequence[LevelRow], known: str | None,
                  action: str | None, na_reason: str, action_reason: str) -> list[str]:
    """What the form still needs before it can be saved, one line per gap, in its own words.

    Examples
    --------
    >>> form_problems(None, [], None, None, "", "")
    ['Decision: choose one of the four answers at the top of the form']
    >>> form_problems("confirmed", [], None, "", "", "")  # doctest: +NORMALIZE_WHITESPACE
    ['Fractured vertebrae: add at least one vertebra with its level and grade',
     'Was it already known?: choose one answer', 'What happens next?: choose an action']
    """
    problems: list[str] = []
    if not decision:
        return ["Decision: choose one of the four answers at the top of the form"]
    if decision == Decision.CONFIRMED.value:
        if not rows:
            problems.append("Fractured vertebrae: add at least one vertebra with its level "
                            "and grade")
        seen: dict[str, int] = {}
        for i, row in enumerate(rows):
            v = row.value()
            if not v["level"]:
                problems.append(f"{row.name(i)}: choose its level (T1 to L5)")
            elif v["level"] in seen:
                problems.append(f"{row.name(i)}: {v['level']} is already vertebra "
                                f"{seen[v['level']] + 1}; remove one of them")
            else:
                seen[v["level"]] = i
            if v["grade"] not in (1, 2, 3):
                problems.append(f"{row.name(i)}: choose its grade (1 mild, 2 moderate, "
                                "3 severe)")
        if not known:
            problems.append("Was it already known?: choose one answer")
        if not action:
            problems.append("What happens next?: choose an action")
        elif action == Action.NOT_APPROPRIATE.value and not action_reason.strip():
            problems.append("Why a referral is not appropriate: say why in the Reason box")
    if decision == Decision.NOT_ASSESSABLE.value and not na_reason.strip():
        problems.append("Why the images cannot be assessed: say why in the Reason box")
    return problems


def friendly(problem: str) -> str:
    """A server validation message in the form's words.

    Examples
    --------
    >>> friendly("levels.0.grade: Input should be greater than or equal to 1")
    'Vertebra 1 grade: Input should be greater than or equal to 1'
    >>> friendly("previously_known: choose none, reported or known_fls")
    'Was it already known?: choose one answer'
    """
    field, sep, rest = problem.partition(":")
    m = re.fullmatch(r"levels\.(\d+)\.(\w+)", field.strip())
    if m:
        return f"Vertebra {int(m.group(1)) + 1} {m.group(2)}{sep}{rest}"
    key = field.strip()
    if key == "previously_known":
        return "Was it already known?: choose one answer"
    if key == "action" and "choose" in rest:
        return "What happens next?: choose an action"
    return FIELD_LABELS.get(key, key.replace("_", " ")) + sep + rest


__all__ = [
    "ACTION_LABELS",
    "DECISION_LABELS",
    "FIELD_LABELS",
    "GRADE_LABELS",
    "KNOWN_LABELS",
    "LevelRow",
    "form_problems",
    "friendly",
]
