"""CLAP's byte-level BPE against the fixture's ids and masks, and the reference tokenizer's rules on hand cases."""

import json
from pathlib import Path

import numpy as np
import pytest

from audiofind.model.clap.bpe import (
    CONTEXT_LENGTH,
    PRETOKENIZE,
    BPETokenizer,
    bytes_to_unicode,
    load_tokenizer,
    merge_word,
)
from clapkit import REF, VOCAB, fixture_texts


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return load_tokenizer(VOCAB)


def decode(tok: BPETokenizer, ids: np.ndarray) -> str:
    """The text of content ids: each token's characters back to their bytes."""
    inverse = {v: k for k, v in tok.vocab.items()}
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    return bytes(byte_of[c] for i in ids for c in inverse[int(i)]).decode("utf-8")


def test_fixture_ids_and_masks(tok: BPETokenizer) -> None:
    ids, mask = tok.encode(fixture_texts())
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == (6, CONTEXT_LENGTH)
    assert np.array_equal(ids, REF["text_input_ids"])
    assert np.array_equal(mask, REF["text_attention_mask"])


def test_layout_is_bos_content_eos_then_pads(tok: BPETokenizer) -> None:
    ids, mask = tok.encode(["rain on a tin roof"])
    n = int(mask.sum())
    assert ids[0, 0] == 0 and ids[0, n - 1] == 2 and (ids[0, n:] == 1).all() and (mask[0, :n] == 1).all()
    assert decode(tok, ids[0, 1 : n - 1]) == "rain on a tin roof"


def test_non_ascii_is_split_into_its_utf8_bytes(tok: BPETokenizer) -> None:
    text = "café naïve 🐕 Ωmega"
    ids, mask = tok.encode([text])
    content = ids[0, 1 : int(mask.sum()) - 1]
    assert decode(tok, content) == text  # every byte kept, nothing normalised
    # "é" is c3 a9 in UTF-8; its two byte-characters are separate tokens in this small vocabulary.
    e_acute = [tok.vocab[bytes_to_unicode()[b]] for b in "é".encode()]
    assert any(list(content[i : i + 2]) == e_acute for i in range(len(content) - 1))


def test_long_caption_is_truncated_with_eos_last(tok: BPETokenizer) -> None:
    long = "a dog barks and a cat meows while rain falls on the roof " * 8
    ids, mask = tok.encode([long])
    assert mask.all() and ids[0, 0] == 0 and ids[0, -1] == 2
    assert list(ids[0, 1:-1]) == tok.text_ids(long)[: CONTEXT_LENGTH - 2]  # the first 75 content tokens
    assert len(tok.text_ids(long)) > CONTEXT_LENGTH


def test_no_lower_casing_and_spaces_matter(tok: BPETokenizer) -> None:
    (upper, lower, spaced), _ = tok.encode(["Wind", "wind", " wind"])
    assert list(upper[:3]) != list(lower[:3]) and list(spaced[:3]) != list(lower[:3])
    assert decode(tok, spaced[1:2]) == " wind"  # the space belongs to the word after it (Ġwind)


def test_pretokenizer_is_gpt2s() -> None:
    # A run of spaces leaves its last space to the next word; contractions and digit runs are pieces of their own.
    assert PRETOKENIZE.findall("rain  on\n") == ["rain", " ", " on", "\n"]
    assert PRETOKENIZE.findall("it's 808 kicks!!") == ["it", "'s", " 808", " kicks", "!!"]


def test_empty_and_blank_texts_are_refused(tok: BPETokenizer) -> None:
    for text in ("", " ", "\n\t "):
        with pytest.raises(ValueError, match="nothing to embed"):
            tok.encode(["rain", text])


def test_special_tokens_written_in_a_text_are_kept(tok: BPETokenizer) -> None:
    # As Hugging Face's added tokens: matched before BPE, the text around them tokenised on its own.
    ids, mask = tok.encode(["rain<pad>roof"])
    assert list(ids[0, : int(mask.sum())]) == [0, *tok.text_ids("rain"), 1, *tok.text_ids("roof"), 2]


def test_merges_apply_lowest_rank_first_and_left_to_right() -> None:
    ranks = {("a", "a"): 0, ("aa", "aa"): 1, ("b", "c"): 2, ("a", "b"): 3}
    assert merge_word(tuple("aaa"), ranks) == ("aa", "a")
    assert merge_word(tuple("aaaa"), ranks) == ("aaaa",)
    assert merge_word(tuple("abc"), ranks) == ("a", "bc")  # (b, c) outranks (a, b)
    assert merge_word(tuple("xyz"), ranks) == ("x", "y", "z")


def test_cache_returns_the_same_ids(tok: BPETokenizer) -> None:
    first = tok.encode(["Door creak, slow!"])[0]
    assert " slow" in tok.cache and np.array_equal(tok.encode(["Door creak, slow!"])[0], first)


def test_bad_vocabulary_folders_are_refused(tmp_path: Path) -> None:
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="lacks <s>"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text((VOCAB / "vocab.json").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ValueError, match="not one pair"):
        load_tokenizer(tmp_path)
