import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from lmcore.tokenizer import UNK_TOKEN, TokenizerConfig, load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def bpe():
    corpus = ["the quick brown fox jumps over the lazy dog\n" * 50, "héllo wörld, ünïcode çà va\n" * 20]
    return train_tokenizer(corpus, TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=2))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trips_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_round_trips_hard_cases(bpe):
    for text in ["", " leading space", "\r\n\t\x00", "emoji 🌍🏳️‍🌈", "日本語のテキスト", "\ud7ff\ue000", "a\u0301"]:
        assert bpe.decode(bpe.encode(text)) == text


def test_bpe_learns_merges_and_specials(bpe):
    assert bpe.vocab_size == 300
    assert len(bpe.encode("the quick brown fox")) < len("the quick brown fox")
    assert {bpe.eot_id, bpe.pad_id} == {0, 1}


def test_char_tokenizer_maps_unseen_characters_to_unk():
    tok = train_tokenizer(["abc\nab c"], TokenizerConfig(kind="char"))
    assert tok.decode(tok.encode("cab\n a")) == "cab\n a"
    unk = tok.tokenizer.token_to_id(UNK_TOKEN)
    assert tok.encode("aZb") == [tok.encode("a")[0], unk, tok.encode("b")[0]]
    assert tok.decode(tok.encode("aZ")) == "a" + UNK_TOKEN


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_saved_file_is_a_hugging_face_tokenizer_json(tmp_path, kind):
    tok = train_tokenizer(
        ["some text to learn from\n" * 30], TokenizerConfig(kind=kind, vocab_size=270, min_frequency=1)
    )
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    hf = Tokenizer.from_file(str(path))
    assert hf.encode("some text").ids == tok.encode("some text")
    assert json.loads(path.read_text())["model"]["type"] == "BPE"
    reloaded = load_tokenizer(path)
    assert reloaded.sha256() == tok.sha256()
    assert reloaded.decode(reloaded.encode("learn text")) == "learn text"


def test_encode_to_array_matches_and_round_trips(bpe):
    text = "line one\nline two\n\nthe lazy dog\n" * 3000
    ids = bpe.encode_to_array(text)
    assert bpe.decode(ids.tolist()) == text


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="vocab_size"):
        TokenizerConfig(kind="bpe", vocab_size=100)
    with pytest.raises(ValueError, match="eot_token"):
        TokenizerConfig(eot_token="<eos>")
