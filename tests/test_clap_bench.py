"""bench speed with both families: a 10 s window through each audio tower side by side, and a cold search of a
CLAP index (a fresh process with the numpy tower and a tokenizer of RoBERTa's size), here on tiny configurations."""

from pathlib import Path

from audiofind.bench import coldstart, families
from audiofind.model.clap.bpe import load_tokenizer
from audiofind.model.config import TINY
from clapkit import CLAP_CLI, CLAP_TINY


def test_window_speed_times_both_families() -> None:
    got = families.window_speed("cpu", repeat=1, audioclip=TINY, clap=CLAP_TINY)
    assert set(got) == set(families.LABELS) and all(0 < s < 60 for s in got.values())


def test_the_synthetic_tokenizer_has_robertas_size(tmp_path: Path) -> None:
    tok = load_tokenizer(families.write_synthetic_tokenizer(tmp_path / "tok"))
    assert len(tok.vocab) == 50265 and len(tok.ranks) == 50000 and tok.vocab["<mask>"] == 50264
    ids, mask = tok.encode(["rain on a tin roof"])
    assert 2 < mask.sum() < 18  # letter pairs merge: fewer tokens than characters


def test_cold_search_bench_times_a_clap_index() -> None:
    assert 0 < coldstart.cold_search_bench(segments=1500, repeat=1, cfg=CLAP_CLI, family="clap") < 120
