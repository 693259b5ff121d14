"""The tokenisation cache: a hit returns what was built, any change of input misses, writers race safely."""

import multiprocessing
from pathlib import Path

from lib.core.cache import DiskCache
from lib.data.batching import load_ids, save_ids, tokenize, trailing_special_tokens, truncate
from tests.ranks import frozen_garbage


def _build_counter(calls: list, value: str):
    def build(folder: Path) -> None:
        calls.append(value)
        (folder / "value.txt").write_text(value)
    return build


def _read(folder: Path) -> str:
    return (folder / "value.txt").read_text()


def test_a_hit_skips_the_build_and_a_changed_description_misses(tmp_path):
    cache, calls = DiskCache(tmp_path), []
    assert cache.load_or_build("k", {"a": 1}, _build_counter(calls, "first"), _read) == "first"
    assert cache.load_or_build("k", {"a": 1}, _build_counter(calls, "second"), _read) == "first"
    assert cache.load_or_build("k", {"a": 2}, _build_counter(calls, "third"), _read) == "third"
    assert calls == ["first", "third"]


def test_disabled_cache_always_builds_and_leaves_nothing(tmp_path):
    calls = []
    for _ in range(2):
        assert DiskCache(None).load_or_build("k", {"a": 1}, _build_counter(calls, "v"), _read) == "v"
    assert calls == ["v", "v"]


def test_a_failed_build_leaves_no_entry(tmp_path):
    def broken(folder: Path) -> None:
        (folder / "half").write_text("x")
        raise RuntimeError("boom")

    cache = DiskCache(tmp_path)
    try:
        cache.load_or_build("k", {"a": 1}, broken, _read)
    except RuntimeError:
        pass
    assert list((tmp_path / "k").iterdir()) == []


def _worker(root: str, queue) -> None:
    import time

    def slow(folder: Path) -> None:
        time.sleep(0.3)
        (folder / "value.txt").write_text(str(multiprocessing.current_process().pid))

    queue.put(DiskCache(Path(root)).load_or_build("k", {"same": True}, slow, _read))


def test_concurrent_writers_agree_on_one_entry(tmp_path):
    context = multiprocessing.get_context("fork")  # the workers use no torch, so fork is safe and quick
    queue = context.Queue()
    workers = [context.Process(target=_worker, args=(str(tmp_path), queue)) for _ in range(3)]
    with frozen_garbage():
        for w in workers:
            w.start()
    for w in workers:
        w.join(60)
    values = [queue.get(timeout=5) for _ in workers]
    entries = [p for p in (tmp_path / "k").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and all(v == _read(entries[0]) for v in values)
    assert not [p for p in (tmp_path / "k").iterdir() if p.name.startswith(".")]


def test_ids_round_trip_and_truncation_matches_the_tokenizer(tmp_path):
    from lib.model.backbone import train_wordpiece

    texts = ["영화 정말 재밌다 최고 " * k for k in range(1, 8)] + [""]
    tokenizer = train_wordpiece(texts * 5, 100, [])
    full = tokenize(tokenizer, texts, 64)
    save_ids(tmp_path / "ids.npz", full)
    assert all((a == b).all() for a, b in zip(load_ids(tmp_path / "ids.npz"), full))
    trailing = trailing_special_tokens(tokenizer)
    assert trailing == 1
    for max_length in (4, 9, 30):
        direct = tokenize(tokenizer, texts, max_length)
        assert all((a == b).all() for a, b in zip(truncate(full, max_length, trailing), direct))
