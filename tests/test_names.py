"""Splitting names into words: CamelCase, UCS category ids, separators, digits, case and accents; thin names."""

import pytest

from audiofind.audio.names import is_thin, real_words, words


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("DOORWood_Creak Slow Old Barn_JD_01.wav", "door wood creak slow old barn jd 01"),  # UCS CatID, then CamelCase
        ("Kick808", "kick 808"),
        ("ThunderHeavy-Distant.v2.final", "thunder heavy distant v 2 final"),
        ("rain_on-tin.roof  (take 3)", "rain on tin roof take 3"),
        ("Café ÉTÉ Straße", "cafe ete strasse"),  # accents and case folded
        ("AMBUrbn_CityTraffic", "amb urbn city traffic"),
        ("snare.hit.01.AIF", "snare hit 01"),  # an audio extension is not a word...
        ("notes.txt", "notes txt"),  # ...any other is
        ("鳥の声_02", "鳥の声 02"),  # letters without case stay one word
        ("", ""),
    ],
)
def test_words(name: str, expected: str) -> None:
    assert " ".join(words(name)) == expected


def test_thin_names_have_fewer_than_two_real_words() -> None:
    assert real_words(words("Door_Creak_take2_v3_final_01")) == ["door", "creak"]
    assert not is_thin(words("Door_Creak_take2_v3_final_01"))
    for thin in ("Kick808", "Take_01_final", "tk3 v2 A", "0042.wav", "Door_01_ALT copy"):
        assert is_thin(words(thin)), thin
