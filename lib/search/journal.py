"""The sweep journal: an append-only JSONL file that every worker of one sweep shares.

It is the only state of a sweep: the trial table is rebuilt by replaying it, so there is no second
copy to disagree with, and a finished trial once written is never rewritten. Each line is one record
with `op` and `t` (unix time):

    sweep      sweep_id, config_hash, seed, config     always the first line
    created    trial, params                           a new trial, WAITING
    claimed    trial, worker, attempt                  WAITING -> RUNNING (the first claim wins)
    heartbeat  trial, worker                           the owner is alive
    reported   trial, worker, epoch, value             per-epoch metric (the first per epoch wins)
    finished   trial, worker, value                    -> COMPLETE
    pruned     trial, worker, value                    -> PRUNED
    failed     trial, worker, error                    -> FAILED (only from the current owner)
    requeued   trial, reason                           RUNNING or FAILED -> WAITING, same params

Concurrency: appends, and the read-decide-append of a claim, hold an exclusive `flock` on
`<journal>.lock`; plain reads hold a shared one. Linux implements flock over NFS with the server's
byte-range locks, so workers on several machines sharing the folder work too (their clocks should
agree to well within the staleness timeout). Every append is fsynced.

A worker killed mid-append leaves a torn last line (no newline): replay ignores it, and the next
append, holding the lock, cuts it off first and so starts on a new line; the fragment never was a
record, so nothing is lost, and the file stays a sequence of whole lines. Any other unreadable line
is corruption and replay refuses it, naming the file and line.

A trial whose owner shows no sign of life (claim, heartbeat or report) for `stale_after_s` is
requeued by the next claim, keeping its number and parameters, so its run folder and last epoch
checkpoint carry over. A finish from a worker whose trial was requeued in the meantime (it was slow,
not dead) still counts: a result is never thrown away, and the new owner's heartbeat returns False.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lib.core.errors import UserError
from lib.search.trials import Trial, TrialState

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
Suggest = Callable[[int, list[Trial]], dict[str, Any] | None]


@dataclass(frozen=True)
class SweepHeader:
    sweep_id: str
    config_hash: str
    seed: int
    config: dict[str, Any]
    trials: int | None = None  # the --trials budget given at creation; a plain --resume keeps it


def default_worker_id() -> str:
    """Unique per process, readable in the status table: host:pid:random."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Journal:
    """One sweep's journal file. Open it with `create` (new or same sweep) or `open` (resume)."""

    def __init__(self, path: Path, header: SweepHeader, clock: Callable[[], float]) -> None:
        self.path = Path(path)
        self.header = header
        self._clock = clock
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    @classmethod
    def create(cls, path: Path, header: SweepHeader, clock: Callable[[], float] = time.time) -> Journal:
        """Start a journal, or reopen one written by the same sweep; refuse another sweep's."""
        journal = cls(path, header, clock)
        with journal._locked(fcntl.LOCK_EX):
            if journal.path.exists() and journal._lines():  # a lone torn header counts as empty
                found = journal._read_header()
                if (found.sweep_id, found.config_hash) != (header.sweep_id, header.config_hash):
                    raise UserError(
                        f"{journal.path} belongs to sweep {found.sweep_id!r} (config "
                        f"{found.config_hash}), not {header.sweep_id!r} (config {header.config_hash})"
                    )
                return cls(path, found, clock)
            journal._append([{"op": "sweep", "version": FORMAT_VERSION, **asdict(header)}])
        return journal

    @classmethod
    def open(cls, path: Path, clock: Callable[[], float] = time.time) -> Journal:
        """Reopen an existing sweep's journal, taking its config from the header (for --resume)."""
        if not Path(path).is_file():
            raise UserError(f"no sweep journal at {path}")
        journal = cls(path, SweepHeader("", "", 0, {}), clock)
        with journal._locked(fcntl.LOCK_SH):
            return cls(path, journal._read_header(), clock)

    def trials(self) -> list[Trial]:
        """The trial table, replayed from the file."""
        with self._locked(fcntl.LOCK_SH):
            return self._replay()

    def claim(
        self, worker: str, suggest: Suggest, max_trials: int | None, stale_after_s: float
    ) -> Trial | None:
        """Give `worker` a trial to run: a requeued one first, else a new one from `suggest`.

        Running trials without a sign of life for `stale_after_s` are requeued first, with the same
        parameters. Returns None when `max_trials` trials exist (failed ones count) or the sampler
        has nothing left.
        """
        while True:
            with self._locked(fcntl.LOCK_EX):
                trials = self._replay()
                records = self._stale_requeues(trials, stale_after_s)
                requeued = {r["trial"] for r in records}
                waiting = [t for t in trials if t.state is TrialState.WAITING or t.number in requeued]
                if waiting:
                    chosen = min(waiting, key=lambda t: t.number)
                else:
                    number = len(trials)
                    params = (
                        None if max_trials is not None and number >= max_trials else suggest(number, trials)
                    )
                    if params is None:
                        self._append(records)
                        return None
                    records.append(self._record("created", number, params=params))
                    chosen = Trial(number, params)
                attempt = chosen.attempt + 1
                records.append(self._record("claimed", chosen.number, worker=worker, attempt=attempt))
                self._append(records)
                trial = next(t for t in self._replay() if t.number == chosen.number)
            if trial.worker == worker and trial.attempt == attempt:
                return trial
            # Only reachable where the lock does not hold (some network filesystems): the replay
            # rule "first claim wins" decided against us, so try again.
            log.warning(
                "trial %d was claimed by %s at the same time; trying another", trial.number, trial.worker
            )

    def _stale_requeues(self, trials: list[Trial], stale_after_s: float) -> list[dict[str, Any]]:
        now = self._clock()
        records = []
        for t in trials:
            if t.state is TrialState.RUNNING and now - t.last_seen > stale_after_s:
                log.warning(
                    "trial %d: no sign of life from %s for %.0f s; requeued",
                    t.number,
                    t.worker,
                    now - t.last_seen,
                )
                records.append(self._record("requeued", t.number, reason=f"stale {t.worker}"))
        return records

    def heartbeat(self, number: int, worker: str) -> bool:
        """Record that `worker` is alive; False means the trial is no longer its own: stop it."""
        with self._locked(fcntl.LOCK_EX):
            trial = self._trial(number)
            if trial.state is not TrialState.RUNNING or trial.worker != worker:
                return False
            self._append([self._record("heartbeat", number, worker=worker)])
            return True

    def report(self, number: int, worker: str, epoch: int, value: float) -> None:
        self._write("reported", number, worker=worker, epoch=epoch, value=float(value))

    def finish(self, number: int, worker: str, value: float) -> None:
        self._write("finished", number, worker=worker, value=float(value))

    def prune(self, number: int, worker: str, value: float) -> None:
        self._write("pruned", number, worker=worker, value=float(value))

    def fail(self, number: int, worker: str, error: str) -> None:
        self._write("failed", number, worker=worker, error=error)

    def requeue(self, number: int, reason: str) -> None:
        """Run a failed (or running) trial again with the same parameters."""
        self._write("requeued", number, reason=reason)

    # -- file access -------------------------------------------------------------------------

    @contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _record(self, op: str, number: int, **fields: Any) -> dict[str, Any]:
        return {"op": op, "t": self._clock(), "trial": number, **fields}

    def _write(self, op: str, number: int, **fields: Any) -> None:
        with self._locked(fcntl.LOCK_EX):
            self._trial(number)
            self._append([self._record(op, number, **fields)])

    def _trial(self, number: int) -> Trial:
        for t in self._replay():
            if t.number == number:
                return t
        raise UserError(f"{self.path}: there is no trial {number}")

    def _append(self, records: list[dict[str, Any]]) -> None:
        """Write records as whole lines in one write, after dealing with a torn last line."""
        if not records:
            return
        with open(self.path, "a+b") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 65536))
            tail = f.read()
            prefix = b""
            if tail and not tail.endswith(b"\n"):
                whole = tail if b"\n" in tail else self.path.read_bytes()  # a fragment past the window
                fragment = whole.rsplit(b"\n", 1)[-1]
                if _parse(fragment) is None:
                    # Under the lock nobody else is writing it: it is what a killed writer left.
                    log.warning("%s: cutting a torn last line (%d bytes)", self.path, len(fragment))
                    f.truncate(size - len(fragment))
                else:
                    prefix = b"\n"  # a whole record that only lacks its newline
            f.write(prefix + "".join(_encode(r) for r in records).encode())
            f.flush()
            os.fsync(f.fileno())

    def _lines(self) -> list[tuple[int, dict[str, Any]]]:
        """(line number, record) for every line; a torn last line is skipped, other bad lines refused."""
        raw = self.path.read_bytes().split(b"\n")
        out = []
        for i, text in enumerate(raw):
            if not text.strip():
                continue
            record = _parse(text)
            if record is not None:
                out.append((i + 1, record))
            elif i < len(raw) - 1:
                raise UserError(
                    f"{self.path}: line {i + 1} is corrupt (not a journal record); refusing to replay"
                )
        return out

    def _read_header(self) -> SweepHeader:
        lines = self._lines()
        if not lines or lines[0][1].get("op") != "sweep":
            raise UserError(f"{self.path}: line 1 is not a sweep header; is this a sweep journal?")
        head = lines[0][1]
        return SweepHeader(head["sweep_id"], head["config_hash"], head["seed"], head["config"], head.get("trials"))

    def _replay(self) -> list[Trial]:
        table: dict[int, Trial] = {}
        for number, record in self._lines()[1:]:
            try:
                _apply(table, record)
            except (KeyError, TypeError, ValueError) as err:
                raise UserError(f"{self.path}: line {number} is not a valid record ({err!r})") from err
        return [table[n] for n in sorted(table)]


def _encode(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


def _parse(text: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "op" in record else None


def _apply(table: dict[int, Trial], record: dict[str, Any]) -> None:
    """Fold one record into the trial table; records that lost a race are ignored."""
    op, t = record["op"], float(record["t"])
    if op == "sweep":
        raise ValueError("a second sweep header")
    number = int(record["trial"])
    if op == "created":
        if number not in table:
            table[number] = Trial(number, dict(record["params"]), created_at=t, last_seen=t)
        return
    trial = table[number]
    owner = record.get("worker") == trial.worker and trial.state is TrialState.RUNNING
    if op == "claimed":
        if trial.state is TrialState.WAITING:
            trial.state, trial.worker, trial.attempt = TrialState.RUNNING, record["worker"], trial.attempt + 1
            trial.started_at = trial.last_seen = t
    elif op == "heartbeat":
        if owner:
            trial.last_seen = t
    elif op == "reported":
        trial.reports.setdefault(int(record["epoch"]), float(record["value"]))
        if owner:
            trial.last_seen = t
    elif op in ("finished", "pruned"):
        if trial.state in (TrialState.WAITING, TrialState.RUNNING):
            trial.state = TrialState.COMPLETE if op == "finished" else TrialState.PRUNED
            trial.value, trial.finished_at = float(record["value"]), t
    elif op == "failed":
        if owner:
            trial.state, trial.error, trial.finished_at = TrialState.FAILED, str(record["error"]), t
    elif op == "requeued":
        if trial.state in (TrialState.RUNNING, TrialState.FAILED):
            trial.state, trial.worker, trial.finished_at = TrialState.WAITING, None, None
    else:
        raise ValueError(f"unknown op {op!r}")
