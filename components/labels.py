"""Class folder names -> FER2013 ids, by name, never by alphabetical order.

The label set itself (``CLASS_NAMES``) is part of the serving contract
(:mod:`serving.contract`); this module only knows the names datasets give its folders.
"""

from __future__ import annotations

from serving.contract import NUM_CLASSES

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


def class_id_from_name(name: str) -> int | None:
    """Return the FER2013 id for a class folder name, or ``None`` if it is unknown.

    Matching is case-insensitive and ignores surrounding whitespace.
    """
    return _ALIASES.get(name.strip().lower())
