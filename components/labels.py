"""Class folder names -> class ids, by name, never by alphabetical order; and label sets.

A dataset's label set is the tuple of its class names in class-id order. FER2013's seven
(:data:`serving.contract.CLASS_NAMES`) are the default; :func:`label_set` builds another
from a label-map spec (the pipeline's ``label_map`` parameter):

* ``""`` or ``"fer2013"``: FER2013's seven, ids as FER2013 numbers them;
* ``"fer2013-6"``: six classes, disgust merged into anger (a common FER practice);
* ``"fer2013+contempt"``: FER2013's seven, then ``contempt`` as id 7 (the eight classes of
  FER+ and AffectNet);
* ``"folders"``: the class folders say: FER2013's classes that are there, in FER2013's
  order, then any other folder name as a class of its own, in name order (an extra class
  has no id of its own to go by);
* a JSON object, inline or in a ``.json`` file: ``{"classes": ["angry", ...], "map":
  {"disgust": "angry"}}``: the classes in id order, and which folder names (or FER2013
  ids, as a CSV's ``emotion`` column gives them) go to which class.

A folder goes to a class by its own name, or by the FER2013 name it is an alias of
(``"Happiness"``, ``"3"`` -> ``happy``), through ``map`` when it names either.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from serving.contract import CLASS_NAMES, NUM_CLASSES, check_class_names

# Folder names seen in FER2013 exports and related datasets, lower-cased.
_ALIASES: dict[str, int] = {
    "angry": 0, "anger": 0, "angered": 0, "mad": 0,
    "disgust": 1, "disgusted": 1, "disgusting": 1,
    "fear": 2, "fearful": 2, "afraid": 2, "scared": 2,
    "happy": 3, "happiness": 3, "joy": 3, "joyful": 3,
    "sad": 4, "sadness": 4,
    "surprise": 5, "surprised": 5,
    "neutral": 6,
}
# Exports that name class folders by their FER2013 id ("0" ... "6").
_ALIASES.update({str(i): i for i in range(NUM_CLASSES)})

FER2013 = "fer2013"
FOLDERS = "folders"
#: The named label maps: classes in id order, and which FER2013 names go elsewhere.
PRESETS: dict[str, dict] = {
    FER2013: {"classes": list(CLASS_NAMES), "map": {}},
    "fer2013-6": {"classes": ["angry", "fear", "happy", "sad", "surprise", "neutral"],
                  "map": {"disgust": "angry"}},
    "fer2013+contempt": {"classes": [*CLASS_NAMES, "contempt"], "map": {}},
}


class LabelMapError(ValueError):
    """A label map that cannot be used; the message says why."""


def class_id_from_name(name: str) -> int | None:
    """Return the FER2013 id for a class folder name, or ``None`` if it is unknown.

    Matching is case-insensitive and ignores surrounding whitespace.
    """
    return _ALIASES.get(name.strip().lower())


@dataclass(frozen=True)
class LabelSet:
    """Class names in id order and the folder names mapped to other classes' names."""

    classes: tuple[str, ...] = CLASS_NAMES
    mapping: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_fer2013(self) -> bool:
        """FER2013's seven classes, each folder going to its own class: today's default."""
        return self.classes == CLASS_NAMES and not self.mapping

    def class_id(self, folder: str) -> int | None:
        """The class id of the folder ``folder`` (or a FER2013 id as text), or ``None``."""
        name = folder.strip().lower()
        fer = class_id_from_name(name)
        canonical = CLASS_NAMES[fer] if fer is not None else name
        target = self.mapping.get(name, self.mapping.get(canonical, canonical))
        return self.classes.index(target) if target in self.classes else None

    def describe(self) -> str:
        """One line for people: ``0 angry, 1 fear, ... (disgust -> angry)``."""
        text = ", ".join(f"{i} {n}" for i, n in enumerate(self.classes))
        merged = ", ".join(f"{k} -> {v}" for k, v in self.mapping.items())
        return f"{text} ({merged})" if merged else text


def _from_spec(spec: Mapping, where: str) -> LabelSet:
    if not isinstance(spec, Mapping) or set(spec) - {"classes", "map"} or "classes" not in spec:
        raise LabelMapError(f"{where}: a label map is an object with 'classes' (the class "
                            f"names in id order) and optionally 'map' (folder -> class)")
    try:
        classes = check_class_names(spec["classes"])
    except ValueError as exc:
        raise LabelMapError(f"{where}: {exc}") from exc
    mapping = spec.get("map", {})
    if not isinstance(mapping, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise LabelMapError(f"{where}: 'map' must map folder names to class names")
    mapping = {k.strip().lower(): v for k, v in mapping.items()}
    unknown = sorted(set(mapping.values()) - set(classes))
    if unknown:
        raise LabelMapError(f"{where}: 'map' sends folders to {unknown}, which are not among "
                            f"the classes {list(classes)}")
    return LabelSet(classes, mapping)


def _from_folders(folders: Iterable[str]) -> LabelSet:
    names = {f.strip().lower() for f in folders}
    fer = {class_id_from_name(n) for n in names} - {None}
    extra = sorted(n for n in names if class_id_from_name(n) is None)
    classes = [CLASS_NAMES[i] for i in sorted(fer)] + extra
    try:
        return LabelSet(check_class_names(classes))
    except ValueError as exc:
        raise LabelMapError(f"class folders {sorted(names)}: {exc}") from exc


def label_set(spec: str, folders: Iterable[str] = ()) -> LabelSet:
    """The :class:`LabelSet` a label-map ``spec`` names (see the module's doc); ``folders``,
    the source's class folder names, for ``"folders"``. Raises :class:`LabelMapError`."""
    text = (spec or FER2013).strip()
    if text in PRESETS:
        return _from_spec(PRESETS[text], text)
    if text == FOLDERS:
        return _from_folders(folders)
    if text.startswith("{"):
        where, raw = "label map", text
    elif text.endswith(".json"):
        where = text
        try:
            raw = Path(text).read_text()
        except OSError as exc:
            raise LabelMapError(f"cannot read the label map {text}: {exc.strerror}") from exc
    else:
        raise LabelMapError(f"unknown label map {text!r}: use one of "
                            f"{', '.join([*PRESETS, FOLDERS])}, a JSON object or a .json file")
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LabelMapError(f"{where} is not valid JSON: {exc}") from exc
    return _from_spec(parsed, where)
