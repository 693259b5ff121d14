"""The sweep journal: replay, claims across processes, stale requeue, torn and corrupt lines, resume."""

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from lib.core.errors import UserError
from lib.search import RandomSampler, TPESampler, TrialState, load_sweep_config, parse_sweep_config
from lib.search.journal import Journal, SweepHeader

SEED = Path(__file__).resolve().parent.parent / "experiments" / "sweep_seed.json"
SPACE = parse_sweep_config(
    {
        "method": "random",
        "metric": {"name": "eval_loss"},
        "parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3}},
    }
)
HEADER = SweepHeader("sweep-a", SPACE.config_hash(), 0, SPACE.to_dict())


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def suggest(number, trials):
    return RandomSampler(SPACE, 0).suggest(number)


def test_a_trial_goes_through_its_states_and_replays(tmp_path):
    journal = Journal.create(tmp_path / "journal.jsonl", HEADER)
    trial = journal.claim("w1", suggest, max_trials=2, stale_after_s=60)
    assert (trial.number, trial.state, trial.worker, trial.attempt) == (0, TrialState.RUNNING, "w1", 1)
    assert trial.params == suggest(0, [])
    journal.report(0, "w1", 1, 0.9)
    journal.report(0, "w1", 1, 0.1)  # the first report of an epoch wins
    journal.report(0, "w1", 2, 0.7)
    journal.finish(0, "w1", 0.7)
    journal.claim("w2", suggest, max_trials=2, stale_after_s=60)
    journal.prune(1, "w2", 1.2)
    assert journal.claim("w3", suggest, max_trials=2, stale_after_s=60) is None  # budget spent
    reopened = Journal.open(tmp_path / "journal.jsonl")
    assert reopened.header == HEADER
    first, second = reopened.trials()
    assert (first.state, first.value, first.reports) == (TrialState.COMPLETE, 0.7, {1: 0.9, 2: 0.7})
    assert (second.state, second.value) == (TrialState.PRUNED, 1.2)


def test_a_journal_from_another_sweep_is_refused(tmp_path):
    path = tmp_path / "journal.jsonl"
    Journal.create(path, HEADER)
    with pytest.raises(UserError, match="belongs to sweep 'sweep-a'"):
        Journal.create(path, SweepHeader("sweep-b", HEADER.config_hash, 0, {}))
    with pytest.raises(UserError, match="config"):
        Journal.create(path, SweepHeader("sweep-a", "0123456789abcdef", 0, {}))
    assert Journal.create(path, HEADER).header == HEADER  # the same sweep reopens
    with pytest.raises(UserError, match="no sweep journal"):
        Journal.open(tmp_path / "elsewhere.jsonl")


def test_a_torn_last_line_is_ignored_and_the_next_append_starts_a_new_line(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal.create(path, HEADER)
    journal.claim("w1", suggest, None, 60)
    journal.finish(0, "w1", 0.5)
    with open(path, "ab") as f:
        f.write(b'{"op":"reported","t":1,"trial":0,"ep')  # a writer killed mid-line
    assert [t.state for t in journal.trials()] == [TrialState.COMPLETE]
    journal.claim("w1", suggest, None, 60)
    journal.finish(1, "w1", 0.4)
    states = [(t.number, t.state, t.value) for t in Journal.open(path).trials()]
    assert states == [(0, TrialState.COMPLETE, 0.5), (1, TrialState.COMPLETE, 0.4)]
    assert b'"ep' not in path.read_bytes()  # the fragment was cut, every line is whole
    # A writer dying again, twice in a row, is handled the same way.
    for torn in (b'{"op":"heartbeat","t":1,', b'{"op":"fin'):
        with open(path, "ab") as f:
            f.write(torn)
        journal.report(1, "w1", 3, 0.2)
    assert journal.trials()[1].reports == {3: 0.2}


def test_a_header_torn_at_creation_is_replaced(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"op":"sweep","version":1,"swee')
    assert Journal.create(path, HEADER).header == HEADER
    assert Journal.open(path).header == HEADER


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal.create(path, HEADER)
    journal.claim("w1", suggest, None, 60)
    path.write_bytes(path.read_bytes() + b'{"op":"finished","t":5,"trial":0,"worker":"w1","value":0.3}')
    assert journal.trials()[0].value == 0.3
    journal.claim("w1", suggest, None, 60)
    assert [t.state for t in journal.trials()] == [TrialState.COMPLETE, TrialState.RUNNING]
    ops = [json.loads(line)["op"] for line in path.read_bytes().splitlines()]  # every line is whole
    assert ops == ["sweep", "created", "claimed", "finished", "created", "claimed"]


def test_a_corrupt_line_in_the_middle_is_refused_with_its_number(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal.create(path, HEADER)
    journal.claim("w1", suggest, None, 60)
    journal.finish(0, "w1", 0.5)
    lines = path.read_bytes().split(b"\n")
    lines[1] = b'{"op":"created","tri'
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(UserError, match=r"journal.jsonl: line 2 is corrupt"):
        journal.trials()
    lines[1] = b'{"op":"teleported","t":1,"trial":0}'
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(UserError, match=r"line 2 is not a valid record"):
        journal.trials()


def test_a_stale_trial_is_requeued_with_the_same_params_and_a_late_finish_still_counts(tmp_path):
    clock = FakeClock()
    journal = Journal.create(tmp_path / "journal.jsonl", HEADER, clock=clock)
    slow = journal.claim("slow", suggest, 5, stale_after_s=60)
    clock.now += 30
    assert journal.heartbeat(0, "slow")
    clock.now += 61
    retry = journal.claim("fast", suggest, 5, stale_after_s=60)
    assert (retry.number, retry.params, retry.worker, retry.attempt) == (0, slow.params, "fast", 2)
    assert not journal.heartbeat(0, "slow")  # the slow worker learns it lost the trial
    journal.fail(0, "slow", "late failure")  # ...and cannot fail it for the new owner
    assert journal.trials()[0].state is TrialState.RUNNING
    journal.finish(0, "slow", 0.25)  # but a result is never thrown away
    journal.requeue(0, "should not undo a finished trial")
    journal.fail(0, "fast", "too late")
    (trial,) = journal.trials()
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.25)
    assert not journal.heartbeat(0, "fast")


def test_a_failed_trial_can_be_requeued_explicitly(tmp_path):
    journal = Journal.create(tmp_path / "journal.jsonl", HEADER)
    first = journal.claim("w1", suggest, 1, 60)
    journal.fail(0, "w1", "CUDA out of memory")
    assert journal.trials()[0].error == "CUDA out of memory"
    assert journal.claim("w1", suggest, 1, 60) is None  # failed trials use up the budget
    journal.requeue(0, "retry after OOM")
    again = journal.claim("w2", suggest, 1, 60)
    assert (again.number, again.params, again.attempt) == (0, first.params, 2)


def _claim_until_done(path, worker, start, out):
    journal = Journal.create(Path(path), HEADER)
    mine = []
    start.wait()
    while (trial := journal.claim(worker, suggest, max_trials=40, stale_after_s=600)) is not None:
        mine.append(trial.number)
        time.sleep(0.005)  # a little "training", so the two workers interleave
        journal.finish(trial.number, worker, 0.0)
    out.put((worker, mine))


def test_two_worker_processes_never_claim_the_same_trial(tmp_path):
    path = tmp_path / "journal.jsonl"
    Journal.create(path, HEADER)
    ctx = multiprocessing.get_context("spawn")
    out, start = ctx.Queue(), ctx.Barrier(2)
    workers = [ctx.Process(target=_claim_until_done, args=(str(path), f"w{i}", start, out)) for i in range(2)]
    for w in workers:
        w.start()
    claimed = dict(out.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(timeout=60)
    assert sorted(claimed["w0"] + claimed["w1"]) == list(range(40))
    assert not set(claimed["w0"]) & set(claimed["w1"])
    assert claimed["w0"] and claimed["w1"]  # both really competed
    trials = Journal.open(path).trials()
    assert all(t.state is TrialState.COMPLETE and t.attempt == 1 for t in trials)


def _claim_and_hang(path, ready):
    journal = Journal.create(Path(path), HEADER)
    trial = journal.claim("doomed", suggest, max_trials=None, stale_after_s=600)
    journal.report(trial.number, "doomed", 1, 0.8)
    ready.set()
    time.sleep(600)


def test_a_killed_workers_trial_is_requeued_with_the_same_params(tmp_path):
    path = tmp_path / "journal.jsonl"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    doomed = ctx.Process(target=_claim_and_hang, args=(str(path), ready))
    doomed.start()
    assert ready.wait(timeout=60)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join(timeout=60)
    # Another worker, later: a fake clock an hour ahead makes the silence long enough.
    later = Journal.open(path, clock=lambda: time.time() + 3600)
    trial = later.claim("rescuer", suggest, max_trials=None, stale_after_s=600)
    assert (trial.number, trial.params, trial.worker, trial.attempt) == (0, suggest(0, []), "rescuer", 2)
    assert trial.reports == {1: 0.8}  # what the dead worker reported is kept


def run_sweep(journal, sampler, n_trials, stop_after_claiming=None):
    """Sequential sweep through the journal; optionally 'dies' right after claiming a trial."""
    while (trial := journal.claim("w", sampler.suggest, n_trials, 600)) is not None:
        if trial.number == stop_after_claiming:
            return
        lr = trial.params["learning_rate"]
        journal.finish(trial.number, "w", (lr - 3e-5) ** 2 * 1e9 + trial.params["weight_decay"])


def test_a_resumed_sweep_proposes_what_an_uninterrupted_one_would(tmp_path):
    space = load_sweep_config(SEED)
    header = SweepHeader("s", space.config_hash(), 11, space.to_dict())
    straight = Journal.create(tmp_path / "a.jsonl", header)
    run_sweep(straight, TPESampler(space, 11, n_startup_trials=4), 14)
    interrupted = Journal.create(tmp_path / "b.jsonl", header)
    run_sweep(interrupted, TPESampler(space, 11, n_startup_trials=4), 14, stop_after_claiming=8)
    resumed = Journal.open(tmp_path / "b.jsonl", clock=lambda: time.time() + 3600)
    run_sweep(resumed, TPESampler(space, 11, n_startup_trials=4), 14)
    assert [t.params for t in resumed.trials()] == [t.params for t in straight.trials()]
    assert [t.value for t in resumed.trials()] == [t.value for t in straight.trials()]
    assert resumed.trials()[8].attempt == 2
