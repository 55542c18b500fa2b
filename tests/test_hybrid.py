"""Search by names and sound: the full-text index in step with every change, the modes, the syntax, "why"."""

import json
import os
import shutil
from pathlib import Path

import audiogen
import numpy as np
import pytest
from modelkit import register_tiny
from typer.testing import CliRunner

from audiofind.cli import app
from audiofind.errors import UsageError
from audiofind.search import search
from audiofind.search.embedding import query_encoder, search_text
from audiofind.search.hybrid import NOT_WEIGHT
from audiofind.store import open_store
from audiofind.store import vectors as vec
from audiofind.store.sqlite import migrations
from audiofind.store.sqlite.store import SqliteStore

runner = CliRunner()

# With synthetic weights the audio ranking is noise: only the names carry the words.
NAMES = {
    "Foley/Doors/Door_Creak_Slow_01.wav": 300,
    "Foley/Doors/Old_Door_Creak_02.wav": 330,
    "Foley/Doors/Creak_Door_Hinge.wav": 360,
    "Foley/UCS/DOORWood_Creak Slow Old Barn_JD_01.wav": 390,
    "Foley/Gates/Gate_Slam_Metal.wav": 420,
    "Drums/Kick808_Punchy.wav": 60,
    "Drums/Kick808_Long.wav": 70,
    "Drums/Snare_Tight.wav": 200,
    "Drums/HiHat_Closed.wav": 5000,
    "Ambience/Rain_On_Roof.wav": 900,
    "Ambience/Wind_Howl.wav": 150,
    "Ambience/Creek_Water.wav": 700,
}
DOOR_CREAK = {n for n in NAMES if "creak" in n.lower() and "door" in n.lower()}
KICK_808 = {n for n in NAMES if "Kick808" in n}


def run(*args: object, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    return result.stdout


def found(root: Path, *args: object) -> list[dict]:
    return json.loads(run("search", *args, "--json", "-k", 50))


def names(root: Path, *args: object) -> list[str]:
    return [str(Path(r["path"]).relative_to(root)) for r in found(root, *args)]


@pytest.fixture
def library(tmp_path: Path) -> Path:
    register_tiny()
    root = tmp_path / "Library"
    for name, freq in NAMES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        audiogen.write_audio(root / name, audiogen.sine(freq, 0.6))
    run("index", root, "-w", "tiny")
    return root


@pytest.mark.parametrize("mode", ["hybrid", "text"])
def test_names_put_their_files_first(library: Path, mode: str) -> None:
    door = names(library, "door creak", "--mode", mode)
    assert set(door[: len(DOOR_CREAK)]) == DOOR_CREAK, door
    kick = names(library, "kick 808", "--mode", mode)
    assert set(kick[:2]) == KICK_808, kick
    if mode == "hybrid":  # every file still appears, ranked by sound below the named ones
        assert len(door) == len(NAMES)
    else:
        assert set(door) == DOOR_CREAK  # nothing else is named door or creak ("creek" is another stem)


def test_audio_mode_is_exactly_the_sound_ranking(library: Path) -> None:
    results = found(library, "door creak", "--mode", "audio")
    with open_store(None) as index:
        before = search_text(index, query_encoder(index, None, "cpu"), "door creak", 50)
    assert [(r["path"], r["score"], r["start"], r["end"]) for r in results] == [
        (h.path, h.score, h.start, h.end) for h in before
    ]
    assert [r["why"]["audio_rank"] for r in results] == list(range(1, len(before) + 1))


def test_why_tells_ranks_scores_and_terms(library: Path) -> None:
    results = found(library, "kick 808")
    top = results[0]
    assert set(top["why"]) == {"audio_rank", "audio_score", "text_rank", "terms", "all_terms"}
    assert top["why"]["terms"] == ["kick", "808"] and top["why"]["text_rank"] in (1, 2)
    assert isinstance(top["why"]["audio_rank"], int) and isinstance(top["why"]["audio_score"], float)
    unnamed = next(r for r in results if "Rain" in r["path"])
    assert unnamed["why"]["text_rank"] is None and unnamed["why"]["terms"] == []


def test_files_named_with_every_content_word_come_first_in_hybrid(library: Path) -> None:
    results = found(library, "the door on a creak")  # stop words aside: door, creak
    top = [str(Path(r["path"]).relative_to(library)) for r in results[: len(DOOR_CREAK)]]
    assert set(top) == DOOR_CREAK, top
    assert all(r["why"]["all_terms"] for r in results[: len(DOOR_CREAK)])
    assert not any(r["why"]["all_terms"] for r in results[len(DOOR_CREAK) :])
    assert len(results) == len(NAMES)  # then every other file, by the fused score
    rest = [r["score"] for r in results[len(DOOR_CREAK) :]]
    assert rest == sorted(rest, reverse=True)
    # The score is the fused one, scaled so that first place in both rankings would be 1.0.
    for r in results:
        ranks = [x for x in (r["why"]["audio_rank"], r["why"]["text_rank"]) if x]
        assert r["score"] == pytest.approx(sum(1 / (60 + x) for x in ranks) / (2 / 61))


def test_a_query_no_name_matches_ranks_exactly_as_audio(library: Path) -> None:
    hybrid, audio = found(library, "thunder rumble"), found(library, "thunder rumble", "--mode", "audio")
    assert [r["path"] for r in hybrid] == [r["path"] for r in audio]
    assert not any(r["why"]["all_terms"] or r["why"]["text_rank"] for r in hybrid)


class FixedQuery:
    """A query model whose description vector is fixed: the test decides the sound ranking exactly."""

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    def embed_text(self, texts):  # type: ignore[no-untyped-def]
        return np.stack([self.vector] * len(texts))

    def embed_audio(self, clips):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def test_a_file_holding_every_word_beats_one_the_sound_prefers(tmp_path: Path) -> None:
    from audiofind.store import AudioRow, FileRow, ModelBinding

    files = {"door_only_01.wav": 1.0, "kick_808.wav": 0.9, "rain_roof.wav": 0.8, "door_creak_02.wav": -1.0}
    with SqliteStore.open(tmp_path / "i.db") as index:
        index.bind_model(ModelBinding("m", "0" * 64, 2, 10.0, 5.0))
        for i, (name, closeness) in enumerate(files.items()):  # the sound ranks them in this order
            row = FileRow(str(tmp_path / name), str(tmp_path), 1, 1, f"h{i}")
            v = np.array([[closeness, np.sqrt(1.0001 - closeness**2)]], np.float32)
            index.add_file(row, AudioRow(f"h{i}", 1.0, 44100, 1), [(0.0, 1.0)], v)
        got = search(index, "door creak", model=FixedQuery(np.array([1.0, 0.0], np.float32)))
    # By fused rank alone door_only (sound 1st, names 2nd) would lead; every word named puts door_creak first.
    assert [Path(f.hit.path).name for f in got][:2] == ["door_creak_02.wav", "door_only_01.wav"]
    assert [f.why.all_terms for f in got][:2] == [True, False]


def test_both_rankings_are_fused_to_the_same_depth_whatever_k(tmp_path: Path) -> None:
    from audiofind.store import AudioRow, FileRow, ModelBinding

    # 60 files the sound ranks in order; two are named door: A (50th by sound) and D (60th, a shorter name).
    names = [f"s{i:02d}.wav" for i in range(60)]
    names[49], names[59] = "door_slam_heavy_old.wav", "door.wav"
    with SqliteStore.open(tmp_path / "i.db") as index:
        index.bind_model(ModelBinding("m", "0" * 64, 2, 10.0, 5.0))
        for i, name in enumerate(names):
            closeness = 1.0 - i / 100
            v = np.array([[closeness, np.sqrt(1.0001 - closeness**2)]], np.float32)
            index.add_file(FileRow(str(tmp_path / name), str(tmp_path), 1, 1, f"h{i}"), AudioRow(f"h{i}", 1.0, 44100, 1),
                           [(0.0, 1.0)], v)  # fmt: skip
        top = search(index, "door creak", k=1, model=FixedQuery(np.array([1.0, 0.0], np.float32)))
    # A: 1/(60+2) by name + 1/(60+50) by sound beats s00's 1/61, D's 1/61 + 1/120: only if the sound is fused to
    # depth 100 even when one result is asked for.
    assert [Path(f.hit.path).name for f in top] == ["door_slam_heavy_old.wav"]


def test_fusion_lifts_a_file_both_rankings_hold() -> None:
    from audiofind.search.hybrid import TOP, fuse
    from audiofind.store import Hit

    hit = lambda name: Hit(name, 0.0, 0.0, 1.0, 1.0, {}, name)
    sound = [hit("kick")] + [hit(f"s{i}") for i in range(48)] + [hit("door")]  # door: 50th by sound
    names = [hit(f"n{i}") for i in range(49)] + [hit("door")]  # ...and 50th by name
    fused = [h.path for h in fuse(sound, names)]
    assert fused.index("door") < fused.index("kick")  # 2/110 beats 1/61
    assert fuse([hit("a")], [hit("a")])[0].score == pytest.approx(TOP)


@pytest.mark.parametrize("mode", ["hybrid", "audio", "text"])
def test_a_quoted_phrase_is_a_requirement_in_every_mode(library: Path, mode: str) -> None:
    assert found(library, '"zebra stampede"', "--mode", mode) == []
    phrase = {str(Path(r["path"]).relative_to(library)) for r in found(library, '"door creak"', "--mode", mode)}
    assert phrase == {"Foley/Doors/Door_Creak_Slow_01.wav", "Foley/Doors/Old_Door_Creak_02.wav"}


@pytest.mark.parametrize("mode", ["hybrid", "audio", "text"])
def test_an_extension_is_a_word_of_its_file(tmp_path: Path, mode: str) -> None:
    register_tiny()
    root = tmp_path / "lib"
    root.mkdir()
    for name in ("kick_soft.wav", "kick_hard.mp3", "kick_deep.flac"):
        audiogen.write_audio(root / name, audiogen.sine(60, 0.5))
    run("index", root, "-w", "tiny")
    kept = {Path(r["path"]).name for r in found(root, "kick -mp3", "--mode", mode)}
    assert kept == {"kick_soft.wav", "kick_deep.flac"}
    assert {Path(r["path"]).name for r in found(root, "flac", "--mode", "text")} == {"kick_deep.flac"}


@pytest.mark.parametrize("mode", ["hybrid", "audio", "text"])
def test_the_format_is_a_word_of_its_file(tmp_path: Path, mode: str) -> None:
    register_tiny()
    root = tmp_path / "lib"
    root.mkdir()
    for name in ("kick_soft.aif", "kick_hard.opus", "kick_deep.wav", "kick_long.m4a"):
        audiogen.write_audio(root / name, audiogen.sine(60, 0.5))
    run("index", root, "-w", "tiny")
    named = lambda query, mode: {Path(r["path"]).name for r in found(root, query, "--mode", mode)}
    assert named("aiff", "text") == {"kick_soft.aif"}  # the container, whatever the extension says
    assert named("ogg", "text") == {"kick_hard.opus"} and named("aac", "text") == {"kick_long.m4a"}
    assert named("kick -pcm", mode) == {"kick_hard.opus", "kick_long.m4a"}  # the codec's family: PCM left out


@pytest.mark.parametrize("mode", ["hybrid", "audio", "text"])
def test_minus_word_leaves_files_out_in_every_mode(library: Path, mode: str) -> None:
    kept = names(library, "door -creak", "--mode", mode)
    assert not any("creak" in n.lower() for n in kept), kept
    if mode != "text":
        assert len(kept) == len(NAMES) - len(DOOR_CREAK)


def test_excluded_words_never_leave_the_sound_side_short(library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audiofind.search import hybrid

    with open_store(None) as index:
        encoder = query_encoder(index, None, "cpu")
        every = search_text(index, encoder, "door", 50)
        creak = [h for h in every if "creak" in h.path.lower()]
        ranking = creak + [h for h in every if h not in creak]  # the sound puts every excluded file first
        monkeypatch.setattr(hybrid, "_audio", lambda index, encoder, query, not_, n, filters: ranking[:n])
        got = search(index, "door -creak", k=2, mode="audio", model=encoder)
    assert [f.hit.path for f in got] == [h.path for h in ranking[len(creak) : len(creak) + 2]]


def test_quoted_phrase_matches_only_in_order(library: Path) -> None:
    phrase = set(names(library, '"door creak"', "--mode", "text"))
    assert phrase == {"Foley/Doors/Door_Creak_Slow_01.wav", "Foley/Doors/Old_Door_Creak_02.wav"}
    assert set(names(library, '"creak door"', "--mode", "text")) == {"Foley/Doors/Creak_Door_Hinge.wav"}


def test_not_subtracts_the_other_description(library: Path) -> None:
    results = found(library, "door creak", "--mode", "audio", "--not", "rain")
    with open_store(None) as index:
        wanted, other = vec.normalize(query_encoder(index, None, "cpu").embed_text(["door creak", "rain"]))
        hits = index.search((wanted - NOT_WEIGHT * other)[None], 50)
    assert [(r["path"], r["score"]) for r in results] == [(h.path, h.score) for h in hits]


def test_text_mode_needs_no_weights(library: Path) -> None:
    run("weights", "remove", "tiny")
    assert set(names(library, "kick 808", "--mode", "text")) == KICK_808
    result = runner.invoke(app, ["search", "kick 808"])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_bad_mode_is_a_usage_error(library: Path) -> None:
    result = runner.invoke(app, ["search", "door", "--mode", "names"])
    assert result.exit_code == 2 and "--mode" in result.output


def in_step(index: SqliteStore) -> bool:
    """The full-text index holds one row for each ok file and nothing else."""
    one = lambda sql: index.conn.execute(sql).fetchall()
    return one("SELECT rowid FROM file_words ORDER BY rowid") == one(
        "SELECT id FROM files WHERE status = 'ok' ORDER BY id"
    )


def test_names_follow_moves_copies_changes_deletions_and_rebuild(library: Path) -> None:
    def text(q: str) -> set[str]:
        with open_store(None) as index:
            assert in_step(index)
        return set(names(library, q, "--mode", "text"))

    shutil.move(library / "Drums", library / "Percussion")  # a folder renamed: its name is searchable, the old one not
    shutil.copy(library / "Ambience/Wind_Howl.wav", library / "Ambience/Gust_Copy.wav")  # a copy: no new embedding
    os.remove(library / "Ambience/Rain_On_Roof.wav")
    audiogen.write_audio(library / "Ambience/Creek_Water.wav", audiogen.sine(710, 0.7))  # changed content, same name
    run("index", library, "-w", "tiny")
    assert text("percussion") == {f"Percussion/{Path(n).name}" for n in NAMES if n.startswith("Drums/")}
    assert text("drums") == set()
    assert text("gust") == {"Ambience/Gust_Copy.wav"} and text("wind howl") == {"Ambience/Wind_Howl.wav"}
    assert text("rain") == set()
    assert text("creek") == {"Ambience/Creek_Water.wav"}
    (library / "Ambience/Gust_Copy.wav").rename(library / "Ambience/Breeze_Copy.wav")  # a moved file
    run("index", library, "-w", "tiny")
    assert text("gust") == set() and text("breeze") == {"Ambience/Breeze_Copy.wav"}
    run("index", "--rebuild", library, "-w", "tiny")
    assert text("breeze") == {"Ambience/Breeze_Copy.wav"} and text("kick 808") == {
        f"Percussion/{Path(n).name}" for n in KICK_808
    }


def test_an_index_of_the_previous_schema_fills_its_names_without_embedding(library: Path) -> None:
    with open_store(None) as index:  # back to the schema before the full-text index
        index.conn.execute("DROP TABLE file_words; DROP TRIGGER IF EXISTS file_words_insert; "
                           "DROP TRIGGER IF EXISTS file_words_update; DROP TRIGGER IF EXISTS file_words_delete")  # fmt: skip
        index.conn.execute(f"DELETE FROM {migrations.TABLE} WHERE name = 'm007_file_words'")
        db, segments = index.path, index.conn.execute("SELECT count(*) FROM segments").fetchone()[0]
    run("weights", "remove", "tiny")  # no model anywhere: nothing can be embedded
    assert set(names(library, "door creak", "--mode", "text")) == DOOR_CREAK
    with SqliteStore.open(db) as index:
        assert "m007_file_words" in migrations.applied(index.conn)
        assert index.conn.execute("SELECT count(*) FROM segments").fetchone()[0] == segments


def test_serve_takes_the_mode(library: Path) -> None:
    from audiofind.serve import params
    from audiofind.serve.library import Library

    asked = {"q": ["kick 808"], "mode": ["text"]}
    p = params.parse(lambda name: asked.get(name, []))
    assert p.mode == "text"
    with Library.open(None) as lib:
        results = [r.as_dict() for r in lib.search(p.q, p.k, p.filters, p.mode)]
    assert {str(Path(r["path"]).relative_to(library)) for r in results} == KICK_808
    assert all(r["why"]["audio_rank"] is None and r["why"]["text_rank"] for r in results)
    with pytest.raises(UsageError):
        params.parse(lambda name: {"q": ["x"], "mode": ["names"]}.get(name, []))


def test_tags_are_searchable_and_follow_their_file(tmp_path: Path) -> None:
    from audiofind.search import search
    from audiofind.store import AudioRow, FileRow, ModelBinding

    with SqliteStore.open(tmp_path / "index.db") as index:
        index.bind_model(ModelBinding("m", "0" * 64, 4, 5.0, 2.5))
        tags = {
            "title": ["Café door"],
            "description": ["Barn hinge, slow"],
            "date": ["1999"],
            "keywords": ["wood", "old"],
        }
        row = FileRow(str(tmp_path / "a" / "take1.wav"), str(tmp_path), 10, 1, "h1", tags=tags)
        index.add_file(row, AudioRow("h1", 1.0, 44100, 1), [(0.0, 1.0)], np.ones((1, 4), np.float32))
        top = lambda q: [f.hit.path for f in search(index, q, mode="text")]
        assert top("cafe") == top("barn hinges") == top("wood") == [row.path]  # folded accents, stemming, keywords
        assert top("1999") == []  # dates say nothing about the sound
        index.add_file(FileRow(row.path, row.root, 11, 2, "h1", tags={"title": ["Gong"]}))  # retagged
        assert top("barn") == [] and top("gong") == [row.path]
        index.record_failure(row.path, row.root, 12, 3, "unreadable")  # a failed file is not found by name
        assert top("take") == [] and in_step(index)


def test_names_follow_watch(tmp_path: Path) -> None:
    from audiofind.model.encoder import load_encoder
    from audiofind.search import search
    from watchkit import Watching, tone

    register_tiny()
    encoder = load_encoder("tiny", "cpu", towers=["audio"])
    root, db = tmp_path / "lib", tmp_path / "i.db"
    tone(root / "Door_Creak.wav", 440)
    with Watching(db, encoder, [root]) as w:
        os.rename(root / "Door_Creak.wav", root / "Gate_Slam.wav")
        w.wait("moved", root / "Gate_Slam.wav")
        with SqliteStore.open(db) as index:
            assert [Path(f.hit.path).name for f in search(index, "gate", mode="text")] == ["Gate_Slam.wav"]
        tone(root / "Kick808.wav", 60)
        w.wait("embedded", root / "Kick808.wav")
        os.remove(root / "Gate_Slam.wav")
        w.wait("removed", root / "Gate_Slam.wav")
    with SqliteStore.open(db) as index:
        top = lambda q: [Path(f.hit.path).name for f in search(index, q, mode="text")]
        assert in_step(index) and top("door") == top("gate") == [] and top("kick 808") == ["Kick808.wav"]


def test_a_format_name_is_one_word_and_an_older_index_gets_it_without_decoding(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from audiofind.audio import decode, formats
    from audiofind.store.sqlite import fulltext

    register_tiny()
    root = tmp_path / "lib"
    root.mkdir()
    for name in ("door knock metal.m4a", "kick_deep.mp3", "Rain_Tin_Roof.wav"):
        audiogen.write_audio(root / name, audiogen.sine(60, 0.5))
    run("index", root, "-w", "tiny")
    named = lambda query: {Path(r["path"]).name for r in found(root, query, "--mode", "text")}
    assert named("m4a") == {"door knock metal.m4a"} and named("MP3") == {"kick_deep.mp3"}
    assert named("a") == named("4") == named("mp") == set()  # the letters and digits of m4a and mp3 are no words
    with open_store(None) as index:
        db = index.path
    with monkeypatch.context() as mp, SqliteStore.open(db) as index:  # as an index made before m012: m 4 a, mp 3
        mp.setattr(formats, "FORMAT_WORDS", frozenset())
        fulltext.refill(index.conn)
        index.conn.execute(f"DELETE FROM {migrations.TABLE} WHERE name = 'm012_whole_format_words'")
        assert index.conn.execute("SELECT count(*) FROM file_words WHERE file_words MATCH 'a'").fetchone()[0] == 1
    with monkeypatch.context() as mp:  # the upgrade reads nothing from the files
        for name in ("stream_audio", "load_audio", "iter_windows", "probe"):
            mp.setattr(decode, name, lambda *a, **k: pytest.fail("the migration read audio"))
        with SqliteStore.open(db) as index:
            assert "m012_whole_format_words" in migrations.applied(index.conn) and in_step(index)
    assert named("a") == named("4") == set() and named("m4a") == {"door knock metal.m4a"}


def test_stop_words_alone_make_no_names_match(tmp_path: Path) -> None:
    register_tiny()
    root = tmp_path / "lib"
    root.mkdir()
    for name in ("Rain_On_Tin_Roof.wav", "Knock_On_Wood.wav", "Switch_On_Off.wav", "The_Wind.wav", "Gate.wav"):
        audiogen.write_audio(root / name, audiogen.sine(60, 0.5))
    run("index", root, "-w", "tiny")
    by_name = lambda query, mode: {Path(r["path"]).name: r["why"] for r in found(root, query, "--mode", mode)}
    assert set(by_name("rain on a tin roof", "text")) == {"Rain_On_Tin_Roof.wav"}  # "on" alone finds nothing
    hybrid = by_name("rain on a tin roof", "hybrid")
    assert next(iter(hybrid)) == "Rain_On_Tin_Roof.wav" and hybrid["Rain_On_Tin_Roof.wav"]["all_terms"]
    assert hybrid["Rain_On_Tin_Roof.wav"]["terms"] == ["rain", "tin", "roof"]  # the content words it holds
    for other in ("Knock_On_Wood.wav", "Switch_On_Off.wav", "The_Wind.wav"):  # found by sound alone
        assert hybrid[other]["text_rank"] is None and hybrid[other]["terms"] == [], other
    # A query of stop words alone still searches the names with them: they are all it says.
    assert list(by_name("on off", "text"))[0] == "Switch_On_Off.wav"
    assert set(by_name("on off", "text")) == {"Rain_On_Tin_Roof.wav", "Knock_On_Wood.wav", "Switch_On_Off.wav"}
    assert [n for n, why in by_name("on off", "hybrid").items() if why["all_terms"]] == ["Switch_On_Off.wav"]
