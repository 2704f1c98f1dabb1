import numpy as np
import pytest
import torch

from lmcore.data import (
    LabeledExamples,
    LengthBucketSampler,
    eval_window_starts,
    get_batch,
    load_token_stream,
    pad_batch,
    write_token_stream,
)


def test_stream_round_trip_and_dtype(tmp_path):
    ids = np.arange(1000) % 300
    meta = write_token_stream(tmp_path / "a.bin", ids, vocab_size=300, num_bytes=2500, tokenizer_sha256="abc")
    data, loaded = load_token_stream(tmp_path / "a.bin")
    assert loaded == meta and loaded.dtype == "uint16" and isinstance(data, np.memmap)
    assert np.array_equal(data, ids) and loaded.bytes_per_token == 2.5
    write_token_stream(tmp_path / "b.bin", np.array([70000, 1]), vocab_size=70001, num_bytes=2, tokenizer_sha256="x")
    assert load_token_stream(tmp_path / "b.bin")[1].dtype == "uint32"


def test_stream_errors(tmp_path):
    with pytest.raises(ValueError, match="outside vocab_size"):
        write_token_stream(tmp_path / "a.bin", np.array([5]), vocab_size=5, num_bytes=1, tokenizer_sha256="")
    write_token_stream(tmp_path / "a.bin", np.arange(10), vocab_size=10, num_bytes=10, tokenizer_sha256="")
    (tmp_path / "a.bin").write_bytes(b"xx")
    with pytest.raises(ValueError, match="sidecar promises"):
        load_token_stream(tmp_path / "a.bin")


def test_get_batch_is_reproducible_and_shifted():
    data = np.arange(500, dtype=np.uint16)
    x1, y1 = get_batch(data, 4, 8, torch.Generator().manual_seed(1))
    x2, _ = get_batch(data, 4, 8, torch.Generator().manual_seed(1))
    assert x1.shape == (4, 8) and x1.dtype == torch.long
    assert torch.equal(x1, x2) and torch.equal(y1, x1 + 1)


def test_eval_windows_are_fixed_and_cover_the_stream():
    starts = eval_window_starts(1000, 64, 400)
    assert starts[0] == 0 and starts[-1] == 1000 - 65 and len(starts) == 400
    assert np.array_equal(starts, eval_window_starts(1000, 64, 400))
    with pytest.raises(ValueError, match="block_size=64"):
        eval_window_starts(50, 64, 10)


def test_padded_batches():
    examples = LabeledExamples(ids=[[1, 2, 3], [4], [5, 6, 7, 8, 9]], labels=[0, 1, 1])
    idx, lengths, labels = pad_batch(examples, [0, 1, 2], pad_id=0, max_len=4)
    assert idx.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0], [6, 7, 8, 9]]  # the last max_len tokens
    assert lengths.tolist() == [3, 1, 4] and labels.tolist() == [0, 1, 1]


def test_length_buckets_cut_padding_but_keep_uniform_sampling():
    lengths = np.random.default_rng(0).integers(1, 60, size=400)
    # The last token of each text (kept when a long text is cut) is its example number, so a batch
    # tells which examples it drew.
    examples = LabeledExamples(ids=[[500] * (n - 1) + [i] for i, n in enumerate(lengths)], labels=[0] * 400)
    sampler = LengthBucketSampler.labeled(examples, pad_id=0, max_len=48, num_buckets=8)
    idx, lens, _ = sampler(16, torch.Generator().manual_seed(3))
    assert torch.equal(idx, sampler(16, torch.Generator().manual_seed(3))[0])
    assert idx.shape[1] == int(lens.max()) <= 48
    g = torch.Generator().manual_seed(0)
    counts = np.zeros(400)
    for _ in range(2000):
        idx, lens, _ = sampler(20, g)
        assert int(lens.max() - lens.min()) <= 12  # about an eighth of the length range
        np.add.at(counts, idx[torch.arange(len(lens)), lens - 1].numpy(), 1)
    assert counts.sum() == 40_000 and counts.min() > 50 and counts.max() < 160  # 100 each on average
    with pytest.raises(ValueError, match="num_buckets"):
        LengthBucketSampler.labeled(examples, 0, 48, 0)
