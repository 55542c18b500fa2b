"""Splitting names into words: CamelCase, UCS category ids, separators, digits, case and accents; thin names."""

import pytest

from audiofind.audio.names import is_thin, real_words, words
from audiofind.store.words import file_words, phrase, stems


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
        ("door knock metal.m4a", "door knock metal"),
        ("Kick_MP3_ac3-EAC3 Mp4.mp2", "kick mp3 ac3 eac3 mp4 mp2"),  # a format's name is one word, not mp 3...
        ("Track3mp3 MP3s", "track 3 mp 3 mp 3 s"),  # ...when it is all of a run of letters and digits
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


def test_an_extension_and_a_format_are_whole_words_of_the_names_index() -> None:
    name = file_words("/lib/door knock metal.m4a", "/lib", None, 1, "m4a", "aac")
    assert name == "door knock metal m4a aac" and stems(name) == ("door", "knock", "metal", "m4a", "aac")
    assert phrase("M4A") == ("m4a",) and phrase("a") not in [(s,) for s in stems(name)]  # a query's "a" is no match
    assert file_words("/lib/kick.mp2", "/lib", None, 1, "mp3", "mp2") == "kick mp2 mp3"  # outside the default list too
