"""The CLIP BPE tokenizer against the reference tokens and the rules of spec section (b.1)."""

import csv
import gc
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from audiofind.model.tokenizer import (
    CONTEXT_LENGTH,
    EOT,
    N_MERGES,
    SOT,
    Tokenizer,
    bytes_to_unicode,
    clean,
    fix_text,
    get_tokenizer,
    load_merges,
    tokenize,
    tokenize_np,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return get_tokenizer()


def byte_id(char: str, word_end: bool = False) -> int:
    """Id of a single printable ASCII byte per the spec: printable bytes first, in order from '!' (33)."""
    return ord(char) - 33 + (256 if word_end else 0)


def test_matches_reference_tokens() -> None:
    ref = np.load(DATA / "public_reference.npz")
    got = tokenize([str(t) for t in ref["caption_texts"]])
    assert got.dtype == torch.int64
    assert got.shape == (12, CONTEXT_LENGTH)
    assert torch.equal(got, torch.from_numpy(ref["text_tokens"]))
    array = tokenize_np([str(t) for t in ref["caption_texts"]])
    assert array.dtype == np.int64 and np.array_equal(array, ref["text_tokens"])


def test_tokenizing_imports_no_torch() -> None:
    code = "import sys; from audiofind.model.tokenizer import tokenize_np; t = tokenize_np('café &amp; rain'); print(t.shape, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["(1,", "77)", "False"]


def test_ascii_skips_ftfy_only_where_ftfy_changes_nothing() -> None:
    import ftfy

    rng = random.Random(0)
    tricky = [
        "rock &amp;amp;amp; roll",
        "a &lt;b&gt; c",
        "tab\there",
        "line\r\nbreak",
        "nul\x00byte",
        "esc\x1b[31mred",
        "del\x7f",
        "form\x0cfeed",
        "<b>bold</b> ; # % $",
        "café",
        "cafÃ©",
        "“quoted”",
        "ﬁne",
        "ｗｉｄｅ",
    ]
    printable = [chr(c) for c in range(32, 127)] + ["\t", "\n", "\r", "\x00", "\x1b", "\x7f"]
    randoms = ["".join(rng.choices(printable, k=rng.randint(0, 40))) for _ in range(3000)]
    for text in tricky + randoms:
        assert fix_text(text) == ftfy.fix_text(text), repr(text)


def test_byte_encoder_layout() -> None:
    enc = bytes_to_unicode()
    assert len(set(enc.values())) == 256
    assert enc[ord("a")] == "a" and enc["é".encode()[0]] == "Ã"  # printable bytes map to themselves
    assert enc[0] == "\u0100" and enc[ord(" ")] == "\u0120" and enc[173] == chr(0x100 + 67)  # the 68 others, in order


def test_vocabulary_layout(tok: Tokenizer) -> None:
    merges = load_merges()
    assert len(merges) == N_MERGES == 48894
    assert len(tok.encoder) == 49408
    assert tok.decoder[0] == "!" and tok.decoder[256] == "!</w>"
    assert tok.decoder[188] == "\u0100" and tok.decoder[188 + 256] == "\u0100</w>"
    assert tok.decoder[512] == "".join(merges[0]) and tok.decoder[49405] == "".join(merges[-1])
    assert tok.encoder["<|startoftext|>"] == SOT == 49406
    assert tok.encoder["<|endoftext|>"] == EOT == 49407


def test_bpe_merges_lowest_rank_first_and_every_occurrence() -> None:
    tiny = Tokenizer([("a", "b"), ("ab", "c</w>"), ("b", "c</w>")])
    assert tiny.bpe("abc") == ("abc</w>",)  # (a,b) outranks (b,c</w>)
    assert tiny.bpe("ababx") == ("ab", "ab", "x</w>")
    assert tiny.bpe("abab") == ("ab", "a", "b</w>")  # the last symbol carries </w>, so (a, b</w>) is no merge
    assert tiny.bpe("q") == ("q</w>",)


def test_case_is_folded(tok: Tokenizer) -> None:
    assert tok.encode("DOG Barks") == tok.encode("dog barks") == tok.encode("Dog BARKS")


def test_words_are_encoded_independently(tok: Tokenizer) -> None:
    assert tok.encode("a b") == tok.encode("a") + tok.encode("b")
    assert tok.encode("dog barks loudly") == tok.encode("dog") + tok.encode("barks") + tok.encode("loudly")


def test_punctuation_runs(tok: Tokenizer) -> None:
    assert tok.encode("wow!!!") == tok.encode("wow") + tok.encode("!!!")
    assert tok.encode("!!!") != tok.encode("!") * 3  # one pre-token, merged by BPE
    assert tok.encode("end...") == tok.encode("end") + tok.encode("...")


def test_contractions(tok: Tokenizer) -> None:
    assert tok.encode("don't") == tok.encode("don") + tok.encode("'t")
    assert tok.encode("it's") == tok.encode("it") + tok.encode("'s")
    assert tok.encode("we'll") == tok.encode("we") + tok.encode("'ll")


def test_digits_split_one_by_one(tok: Tokenizer) -> None:
    assert tok.encode("1984") == [byte_id(c, word_end=True) for c in "1984"]
    assert tok.encode("track12") == tok.encode("track") + [byte_id("1", True), byte_id("2", True)]


def test_accents(tok: Tokenizer) -> None:
    assert tok.decode(tok.encode("café")) == "café "
    assert tok.encode("CAFÉ") == tok.encode("café")
    assert tok.encode("café") != tok.encode("cafe")


def test_emoji(tok: Tokenizer) -> None:
    ids = tok.encode("dog 🐶🐶")
    assert ids[: len(tok.encode("dog"))] == tok.encode("dog")
    assert all(0 <= i < SOT for i in ids)
    assert tok.decode(ids) == "dog 🐶🐶 "


def test_html_entities_unescaped_twice(tok: Tokenizer) -> None:
    assert clean("rock &amp;amp; roll") == "rock & roll"
    assert tok.encode("rock &amp;amp; roll") == tok.encode("rock & roll")
    assert tok.encode("a &lt;b&gt;") == tok.encode("a <b>")
    # ftfy leaves entities alone once a '<' is present, so only the two html.unescape passes decode these.
    assert clean("<b> rock &amp;amp; roll") == "<b> rock & roll"


def test_mojibake_fixed(tok: Tokenizer) -> None:
    assert clean("cafÃ©") == "café"
    assert tok.encode("cafÃ©") == tok.encode("café")


def test_whitespace_collapsed(tok: Tokenizer) -> None:
    assert clean("  A\tdog\n\n barks  ") == "a dog barks"
    assert tok.encode("a\tdog\n\nbarks   ") == tok.encode("a dog barks")


def test_round_trip_of_plain_text(tok: Tokenizer) -> None:
    for text in ["a dog barks in the distance", "rain on a tin roof", "footsteps crunching gravel"]:
        assert tok.decode(tok.encode(text)) == text + " "


def test_empty_and_blank_captions() -> None:
    expected = torch.zeros(1, CONTEXT_LENGTH, dtype=torch.long)
    expected[0, :2] = torch.tensor([SOT, EOT])
    assert torch.equal(tokenize(""), expected)
    assert torch.equal(tokenize(" \n\t "), expected)


def test_long_caption_is_truncated(tok: Tokenizer) -> None:
    text = " ".join(["dog"] * 100)
    full = [SOT, *tok.encode(text), EOT]
    assert len(full) > CONTEXT_LENGTH
    row = tokenize(text)[0]
    assert row.shape == (CONTEXT_LENGTH,)
    assert row[-1].item() == EOT and (row == EOT).sum().item() == 1
    assert row[:-1].tolist() == full[: CONTEXT_LENGTH - 1]


def test_truncation_boundary(tok: Tokenizer) -> None:
    assert len(tok.encode("dog")) == 1
    exact = tokenize(" ".join(["dog"] * 75))[0]  # SOT + 75 + EOT = 77: fits as is
    assert exact.tolist() == [SOT] + tok.encode("dog") * 75 + [EOT]
    over = tokenize(" ".join(["dog"] * 76))[0]
    assert over.tolist() == [SOT] + tok.encode("dog") * 75 + [EOT]


def test_literal_end_of_text_inside_caption(tok: Tokenizer) -> None:
    assert tok.encode("dog<|endoftext|>cat") == tok.encode("dog") + [EOT] + tok.encode("cat")
    assert tok.encode("dog <|ENDOFTEXT|> cat") == tok.encode("dog") + [EOT] + tok.encode("cat")
    row = tokenize("dog <|endoftext|> cat")[0]
    assert (row == EOT).sum().item() == 2
    assert row.argmax().item() == 2  # the text tower pools at the first EOT


def test_plain_string_is_one_caption() -> None:
    one = tokenize("a dog barks")
    assert one.shape == (1, CONTEXT_LENGTH)
    assert torch.equal(one, tokenize(["a dog barks"]))
    many = tokenize(["a dog barks", "", "rain"])
    assert many.shape == (3, CONTEXT_LENGTH)
    assert torch.equal(many[0], one[0])
    assert tokenize([]).shape == (0, CONTEXT_LENGTH)


def test_context_length() -> None:
    short = tokenize("a dog barks loudly in the rain", context_length=4)
    assert short.shape == (1, 4)
    assert short[0].tolist() == tokenize("a dog barks loudly in the rain")[0, :3].tolist() + [EOT]
    with pytest.raises(ValueError):
        tokenize("a dog", context_length=1)


def test_tokenizer_is_loaded_once() -> None:
    assert get_tokenizer() is get_tokenizer()


def test_building_the_tokenizer_leaves_the_garbage_collector_as_it_was() -> None:
    get_tokenizer.cache_clear()
    try:
        assert gc.isenabled()
        get_tokenizer()
        assert gc.isenabled()
        gc.disable()
        get_tokenizer.cache_clear()
        get_tokenizer()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_all_clotho_captions() -> None:
    with open(DATA / "clotho" / "clotho_captions_evaluation.csv", newline="", encoding="utf-8") as f:
        captions = [row[f"caption_{i}"] for row in csv.DictReader(f) for i in range(1, 6)]
    assert len(captions) == 5225
    tokens = tokenize(captions)
    assert tokens.shape == (5225, CONTEXT_LENGTH)
    assert (tokens[:, 0] == SOT).all()
    assert ((tokens == EOT).sum(dim=1) == 1).all()
    assert np.array_equal(tokenize_np(captions), tokens.numpy())
