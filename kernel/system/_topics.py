"""The catalog's topics (issue 18): the coordinator's side of the requests a
publishing or subscribing job sends (`kernel.topics._directory`).

* `topic_publish {name, id, job, kind, record_type, partitions, partition,
  address}`: partition `partition` of topic `name` (publisher `id`, unique
  per run of the publishing operator) is served at `address`. A new `id`
  under a known name replaces the old publisher (a restarted job), unless
  the name belongs to another job that is still active in the system.
  With `refresh` (a running publisher's, now and then: `_refresh`) it never
  replaces another publisher (`{"taken": its job}`) nor opens an ended
  partition again.
* `topic_lookup {name, job}`: `{found, id, kind, record_type, partitions,
  addresses, job}`: found once every partition of the current publisher has
  registered. A topic whose every partition has ended is gone, but for
  the subscribing jobs that had found it (`job` of their lookups): they
  find it still, every partition `ended`, for as long as the coordinator
  runs (its last ENDED_KEPT such topics, in memory) or until the name is
  published again. A reader is remembered while it has a connection open
  and READER_GRACE seconds after its last closed (`readers_left`; a job
  of the system, until it has ended). So a job whose kernels look it up one after the other
  (one before its end, one after) ends on all of them, rather than one
  reading it whole and the others waiting for a publisher that never
  comes.
* `topic_subscribe` / `topic_unsubscribe {name, job, process}`: who reads.
* `topic_unpublish {name, id, partition}`: that partition of the publisher
  has ended its stream. Its row stays, with the address `ended` (a
  subscriber joining later reads its end from the catalog, as its server
  is gone), until every partition has ended; then the topic goes. (Without
  `partition`: the whole topic goes at once.)

A publisher keeps the connection it registered on: once it breaks (no
close frame) with the publication not ended, the publisher is asked
whether it still publishes, and its registration goes where not
(`forget_lost`); a coordinator started again asks so every registration
in its catalog (`forget_left_behind`).

Rows: `topics(name, job, created, schema)` with `schema` a JSON object
(`id`, `kind` "stream" or "service", `record_type`, `partitions`),
`publications(topic, job, process = the partition, address)`,
`subscriptions(topic, job, process = the subscriber's kernel)`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from kernel.system._catalog import ACTIVE, Catalog, CatalogError
from kernel.system._wire import CLIENT, RequestError, tls_handshake_failure

ENDED = "ended"  # a publication's address once its partition has ended
OPS = ("topic_publish", "topic_lookup", "topic_subscribe", "topic_unsubscribe", "topic_unpublish")


def _row(catalog: Catalog, name: str) -> dict | None:
    row = catalog._db.execute("SELECT job, schema FROM topics WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    return {"job": row[0], **json.loads(row[1] or "{}")}


def _name(m: dict) -> str:
    name = m.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError("a topic request needs the topic's name")
    return name


async def request(catalog: Catalog, op: str, m: dict, probe=None, reading: Reading | None = None) -> dict:
    """`probe(address, kind)`: the publisher id a server answers with
    (`probe`, the coordinator's secret and TLS given); `reading`: the
    connection's readers (`Reading`), where the request came on one.

    Each step that reads the catalog and writes on what it read is one call
    on the catalog's thread (`Catalog.call`: one transaction), so that no
    other request's write comes between; only a publisher's probe is awaited
    between two calls, and the second checks again what the first found."""
    name = _name(m)
    if op == "topic_lookup":
        reader = m.get("job")
        if reader is not None and not isinstance(reader, str):
            # (a hand-made client's: kept in sets of readers, it failed there as unhashable)
            raise RequestError(f"a topic lookup's job is a name (a str), got {type(reader).__name__}")
        while True:
            found = await catalog.call(_lookup, catalog, name, reader, reading)
            if not isinstance(found, _LeftBehind):
                return found
            # (a job that has ended, left behind by a restarted coordinator: its rows go)
            await catalog.call(_forget_ended, catalog, found.job, write=True, topics=True)
    if op == "topic_publish" and m.get("refresh") is True:
        # (read first: a registration unchanged, the usual case, costs no write,
        # nor a new listing of every topic; one per partition every 10 s)
        if await catalog.call(_unchanged, catalog, name, m):
            return {}
        return await catalog.call(_refresh, catalog, name, m, write=True, topics=name)
    if op == "topic_publish":
        checked = None  # the id of an old registration found no longer published
        while True:
            row = await catalog.call(_publish, catalog, name, m, checked, write=True, topics=name)
            if row is None:
                return {}
            if await _still_published(catalog, name, row, probe):
                raise RequestError(f"topic {name!r} is published by {row['job']}, which is running")
            # (the probe awaited: another kernel of this publisher, registering
            # its own partition at the same moment, may have replaced the old
            # registration meanwhile, and its partition must stay: `_publish`
            # replaces only the one checked)
            checked = row.get("id")
    if op == "topic_unpublish":
        await catalog.call(_unpublish, catalog, name, m, write=True, topics=name)
        return {}
    if op == "topic_subscribe":
        await catalog.call(_subscribe, catalog, name, str(m["job"]), int(m.get("process", 0)),
                           write=True, topics=name)
        return {}
    if op == "topic_unsubscribe":
        await catalog.call(_unsubscribe, catalog, name, str(m["job"]), int(m.get("process", 0)),
                           write=True, topics=name)
        return {}
    raise RequestError(f"unknown request {op!r}")


class _LeftBehind:
    def __init__(self, job: str) -> None:
        self.job = job


def _lookup(catalog: Catalog, name: str, reader, reading: Reading | None = None) -> dict | _LeftBehind:
    """(On the catalog's thread.)"""
    _reader_seen(catalog, reader, reading)
    row = _row(catalog, name)
    if row is not None and _ended_job(catalog, row["job"]):
        return _LeftBehind(row["job"])
    if row is None:
        ended = _ended(catalog).get(name)
        if ended is not None and reader in ended["readers"]:
            return {"found": True, **ended["topic"]}
        return {"found": False}
    addresses = [a for (a,) in catalog._db.execute(
        "SELECT address FROM publications WHERE topic = ? ORDER BY process", (name,))]
    if len(addresses) < row.get("partitions", 1):
        return {"found": False}
    if row.get("kind", "stream") == "stream":
        # (a service never ends so, `_keep_ended`: its readers, one per client
        # process that ever called it, were kept for as long as it served)
        _readers(catalog, name, row["id"]).add(reader)
    return {"found": True, "addresses": addresses, **row}


def _forget_ended(catalog: Catalog, job: str) -> None:
    """(On the catalog's thread.) Still an ended job's (the lookup's read and
    this are two calls)."""
    if _ended_job(catalog, job):
        catalog.forget_topics_of(job)


def _publish(catalog: Catalog, name: str, m: dict, checked) -> dict | None:
    """(On the catalog's thread.) Register the partition, or return the
    registration of another job that holds the name, to be checked
    (`_still_published`) unless it is the one `checked` already."""
    db = catalog._db
    uid, job, partition = str(m["id"]), str(m["job"]), int(m["partition"])
    row = _row(catalog, name)
    if row is not None and row.get("id") != uid:
        if row["job"] != job and row.get("id") != checked:
            return row
        db.execute("DELETE FROM topics WHERE name = ?", (name,))
        db.execute("DELETE FROM publications WHERE topic = ?", (name,))
        row = None
    if row is None:
        _ended(catalog).pop(name, None)  # published again: the ended one is forgotten
        _carry_readers(catalog, name, uid)
        schema = {"id": uid, "kind": str(m.get("kind", "stream")), "record_type": m.get("record_type"),
                  "partitions": int(m.get("partitions", 1))}
        db.execute("INSERT INTO topics VALUES (?, ?, ?, ?)", (name, job, time.time(), json.dumps(schema)))
        taken = _taken_out(catalog).pop(name, None)
        if taken is not None and taken[0] == uid:  # (back, `_refresh`: its partitions that had ended too)
            db.executemany("INSERT OR IGNORE INTO publications VALUES (?, ?, ?, ?)",
                           [(name, job, ended, ENDED) for ended in taken[1] if ended != partition])
    db.execute("INSERT OR REPLACE INTO publications VALUES (?, ?, ?, ?)",
               (name, job, partition, str(m["address"])))
    return None


def _unchanged(catalog: Catalog, name: str, m: dict) -> bool:
    """(On the catalog's thread, reading only.) Is the refreshed partition
    registered as the refresh says (its publisher's, at its address)? Then
    `_refresh` would write the same row again: nothing to do. An ended
    partition, a name another publisher holds, a topic taken out: `_refresh`
    decides (in its own call: what is read here may change before it)."""
    row = _row(catalog, name)
    if row is None or row.get("id") != str(m["id"]):
        return False
    return catalog._db.execute(
        "SELECT 1 FROM publications WHERE topic = ? AND process = ? AND job = ? AND address = ?",
        (name, int(m["partition"]), str(m["job"]), str(m["address"]))).fetchone() is not None


def _refresh(catalog: Catalog, name: str, m: dict) -> dict:
    """(On the catalog's thread.) A running publisher's registration said
    again (`topic_publish` with `refresh`, now and then, on its connection:
    a coordinator restarted since learns which connection is its): its
    partition's row is written again, and the topic's where it went (taken
    out as gone, `forget_lost`, while it still ran). A name another
    publisher holds now is left to it: `{"taken": its job}`."""
    row, uid = _row(catalog, name), str(m["id"])
    if row is not None and row.get("id") != uid:
        return {"taken": row["job"]}
    if row is None:
        ended = _ended(catalog).get(name)
        if ended is not None and ended["topic"].get("id") == uid:
            return {}  # (it has ended: a refresh overtaken by its end is no new registration)
    elif catalog._db.execute("SELECT 1 FROM publications WHERE topic = ? AND process = ? AND address = ?",
                             (name, int(m["partition"]), ENDED)).fetchone() is not None:
        return {}  # (its partition has ended: it stays ended)
    again = row is None
    if _publish(catalog, name, m, None) is not None:  # (row None or ours: never another's)
        return {"taken": "?"}
    return {"again": True} if again else {}


def _unpublish(catalog: Catalog, name: str, m: dict) -> None:
    """(On the catalog's thread.)"""
    db = catalog._db
    row = _row(catalog, name)
    if row is None or row.get("id") != m.get("id"):
        return
    if m.get("partition") is not None:
        db.execute("UPDATE publications SET address = ? WHERE topic = ? AND process = ?",
                   (ENDED, name, int(m["partition"])))
        ended = db.execute("SELECT COUNT(*) FROM publications WHERE topic = ? AND address = ?",
                           (name, ENDED)).fetchone()[0]
        if ended < row.get("partitions", 1):
            return  # other partitions still publish
        _keep_ended(catalog, name, row)
    db.execute("DELETE FROM topics WHERE name = ?", (name,))
    db.execute("DELETE FROM publications WHERE topic = ?", (name,))
    db.execute("DELETE FROM subscriptions WHERE topic = ?", (name,))


def _subscribe(catalog: Catalog, name: str, job: str, process: int) -> None:
    """(On the catalog's thread.) Not for a topic that has ended and is not
    published again (`_ended`), by one of its subscribers then or a job that
    found it: they end with it. One said again on a new connection
    (`Directory.say_again`) after the end, before its subscriber read it,
    wrote a row no topic shows, and the name's next publisher was listed
    with that subscriber, which never reads it. Another subscriber, come
    after the end, waits for the next publisher (its lookup is not answered
    with the ended topic) and is listed with it (it was left out too, when
    any subscription to an ended name was). (A topic taken out as gone
    keeps its subscriptions: they wait for a new publisher, `_forget_lost`.)"""
    ended = _ended(catalog).get(name)
    if (ended is not None and (job in ended["readers"] or (job, process) in ended["subscribers"])
            and _row(catalog, name) is None):
        return
    catalog._db.execute("INSERT OR IGNORE INTO subscriptions VALUES (?, ?, ?)", (name, job, process))


def note_subscription(subscribed: set, op: str, m: dict) -> None:
    """An app's subscription made (or ended) on a connection: the
    connection's `subscribed`, forgotten when it closes (`forget_subscriptions`)."""
    if op in ("topic_subscribe", "topic_unsubscribe") and str(m.get("job", "")).startswith("app:"):
        key = (str(m.get("name")), str(m["job"]), int(m.get("process", 0)))
        if op == "topic_subscribe":
            subscribed.add(key)
        else:
            subscribed.discard(key)


def forget_subscriptions(catalog: Catalog, subscribed: set) -> None:
    """A connection closed with an app's subscriptions still on it: the app
    is gone (its reader keeps the connection while it reads), so they leave
    the status list (a killed app stayed listed for as long as the topic
    lived). A job of the system's are forgotten when it ends
    (`forget_topics_of`), and a restarted attempt subscribes under the same
    job id, so theirs are left alone."""
    keys = list(subscribed)  # (taken here: a request still served may change the set meanwhile)

    def forget() -> None:
        for name, job, process in keys:
            _unsubscribe(catalog, name, job, process)

    if not subscribed:
        return
    try:  # (not waited for; one that fails leaves a stale row in status, nothing more)
        catalog.call(forget, write=True, topics=True).add_done_callback(_ignore)
    except CatalogError:
        pass  # (closed: the coordinator stops)


def note_publication(published: dict, op: str, m: dict) -> None:
    """A publication registered (or ended) on a connection: the
    connection's `published`, (name, id) -> its partitions registered there
    and not ended, checked when it closes (`forget_lost`). One partition's
    end leaves the others (a client registering two partitions on one
    connection: the first to end unmarked the topic, and once the
    connection broke the other, its publisher gone, stayed listed for good)."""
    key = (str(m.get("name")), str(m.get("id")))
    if op == "topic_publish":
        published.setdefault(key, set()).add(_partition_of(m))
    elif op == "topic_unpublish" and key in published:
        partitions = published[key]
        if m.get("partition") is None:
            partitions.clear()  # (the whole topic goes)
        else:
            partitions.discard(_partition_of(m))
        if not partitions:
            del published[key]


def _partition_of(m: dict):
    """A request's partition, a number as `_publish` and `_unpublish` read
    it; anything else as its repr (a refresh answered early has not read it,
    and noting it must not fail)."""
    try:
        return int(m.get("partition"))
    except (TypeError, ValueError):
        return repr(m.get("partition"))


# seconds after a publisher's connection closed at which its addresses are
# asked whether it still publishes (`forget_lost`): at once, and again where
# it answered (a process being killed may close its coordinator connection
# a moment before its listening sockets)
LOST_CHECKS = (0.0, 0.5, 2.0)
log = logging.getLogger("kernel.system")


async def forget_lost(catalog: Catalog, published: dict, probe, after: set = frozenset()) -> None:
    """A connection broke (no close frame; the coordinator not stopping)
    with publications registered on it and not ended: the publisher may be
    gone (an app SIGKILLed, crashed), and its registration stayed behind,
    found by every lookup, its dead address dialled by each subscriber,
    until another publisher took the name over. Each is asked as a new
    publisher of the name would ask it (`_still_published`: a job of the
    system while it is active; an app while one of its addresses answers
    as that publisher), and taken out of the catalog where it no longer
    publishes: a subscriber then waits for a new publisher. One that still
    answers (its connection reset) stays. `after`: the connection's
    registrations still under way (queued on a locked catalog, or probing
    an old publisher), awaited first: each, once done, is in `published`."""
    if after:
        await asyncio.wait(after)
    for name, uid in list(published):
        await _forget_if_gone(catalog, name, uid, probe, "its connection to the coordinator closed",
                              kept="the connection of publisher %s (%s) closed, but it still publishes")


# registrations asked at once at the coordinator's start (`forget_left_behind`)
LEFT_BEHIND_AT_ONCE = 32
# periods after the coordinator's start in which the registrations that no
# connection has said again are asked (`forget_left_behind`)
LEFT_BEHIND_ROUNDS = 6


async def forget_left_behind(catalog: Catalog, probe, every: float, tied) -> None:
    """Every `every` seconds (a refresh period) from the coordinator's start,
    for LEFT_BEHIND_ROUNDS periods, the registrations in its catalog that no
    open connection has said since (`tied()`: the (name, id) said on one)
    are asked as a broken connection's are (`forget_lost`). A publisher that
    died while the coordinator was down, or after its start but before its
    refresh said its registration on a new connection, has no connection
    that will ever break: its registration stayed listed for good, its dead
    address dialled by each subscriber. One that runs answers (and says its
    registration again within its refresh period); a job of the system
    stays while it is active.

    Not at once: the jobs that had found a topic (`_readers`, in memory)
    are lost with the old coordinator, and a subscriber waiting for a new
    publisher (on_lost="wait") is noted again only by a lookup that finds
    the old registration. Taken out before it asked, the new publisher
    could publish and end between two of its lookups: it was not among
    the topic's readers, found it not at all, and waited for ever."""
    at_once = asyncio.Semaphore(LEFT_BEHIND_AT_ONCE)  # (each holds a probe's socket for up to a second)

    async def check(name: str, uid: str) -> None:
        async with at_once:
            await _forget_if_gone(catalog, name, uid, probe, "the coordinator restarted since it registered",
                                  kept="publisher %s (%s) still publishes, but has not said its "
                                  "registration again since the coordinator restarted")

    for _ in range(LEFT_BEHIND_ROUNDS):
        await asyncio.sleep(every)
        try:
            untied = set(await catalog.call(_registrations, catalog)) - tied()
        except CatalogError as exc:
            log.warning("could not check the topics' publishers left from before this start (%s)", exc)
            continue
        if not untied:
            return
        await asyncio.gather(*(check(name, uid) for name, uid in untied))


async def forget_untied_subscriptions(catalog: Catalog, every: float, said) -> None:
    """`every` seconds (a refresh period) after the coordinator's start, the
    apps' subscriptions in its catalog that no open connection has said
    since (`said()`: the (name, job, process) said on one) go. An app
    subscribed before the restart says its subscription again on a new
    connection as soon as the coordinator is back (`Directory.say_again`),
    and again should it come later; one that died while the coordinator was
    down, or before it was back, says it on no connection, which never
    breaks (`forget_subscriptions`): it stayed listed for as long as the
    topic lived. A job of the system's are forgotten when it ends.

    Asked again each period (LEFT_BEHIND_ROUNDS at most, as the
    publishers left behind) while the catalog cannot be written: a lock
    another program held at the first ask left them listed for good."""

    def forget(held: set) -> None:
        rows = catalog._db.execute("SELECT topic, job, process FROM subscriptions "
                                   "WHERE substr(job, 1, 4) = 'app:'").fetchall()  # (note_subscription's)
        for row in rows:
            if tuple(row) not in held:
                _unsubscribe(catalog, *row)

    for _ in range(LEFT_BEHIND_ROUNDS):
        await asyncio.sleep(every)
        try:
            # (`said()` read with the call queued at once: a subscription said after it is written after it)
            await catalog.call(forget, said(), write=True, topics=True)
            return
        except CatalogError as exc:
            log.warning("could not forget the apps' subscriptions left from before this start (%s)", exc)


def _registrations(catalog: Catalog) -> list[tuple[str, str]]:
    """(On the catalog's thread.) (name, publisher id) of every topic."""
    return [(name, json.loads(schema or "{}").get("id"))
            for name, schema in catalog._db.execute("SELECT name, schema FROM topics").fetchall()]


async def _forget_if_gone(catalog: Catalog, name: str, uid: str, probe, why: str,
                          kept: str | None = None) -> None:
    """Take publisher `uid`'s registration of `name` out of the catalog where
    it no longer publishes (asked at once, and again LOST_CHECKS later where
    it answered); `why` it is asked, and what is said where it is `kept`
    (None: nothing), for the log."""
    try:
        for pause in LOST_CHECKS:
            await asyncio.sleep(pause)
            row = await catalog.call(_row, catalog, name)
            if row is None or row.get("id") != uid:
                break  # ended, or another publisher's since
            if await _still_published(catalog, name, row, probe):
                continue
            if await catalog.call(_forget_lost, catalog, name, uid, write=True, topics=name):
                log.warning("topic %r: publisher %s (%s) is gone (%s and it no longer answers at its "
                            "addresses): taken out of the catalog", name, uid, row["job"], why)
            break
        else:
            if kept is not None:
                log.info(f"topic %r: {kept}: kept", name, uid, row["job"])
    except (CatalogError, RequestError, OSError) as exc:
        log.warning("topic %r: could not check whether publisher %s is gone (%s)", name, uid, exc)


def _forget_lost(catalog: Catalog, name: str, uid: str) -> bool:
    """(On the catalog's thread.) The registration of publisher `uid`, if it
    is still the name's: its rows go; the topic's subscriptions stay (its
    subscribers wait for a new publisher), as do the jobs that had found it
    (`_carry_readers`)."""
    row = _row(catalog, name)
    if row is None or row.get("id") != uid:
        return False
    ended = [p for (p,) in catalog._db.execute(
        "SELECT process FROM publications WHERE topic = ? AND address = ?", (name, ENDED))]
    if ended:  # (a refresh of its partitions still running brings it back, `_publish`: with these)
        taken = _taken_out(catalog)
        taken[name] = (uid, ended)
        while len(taken) > ENDED_KEPT:
            del taken[next(iter(taken))]
    catalog._db.execute("DELETE FROM topics WHERE name = ?", (name,))
    catalog._db.execute("DELETE FROM publications WHERE topic = ?", (name,))
    return True


def _taken_out(catalog: Catalog) -> dict:
    """name -> (publisher id, its partitions that had ended) of a
    registration taken out as gone (`_forget_lost`) with some of its
    partitions ended: a refresh of another of its partitions (it still ran,
    and had not answered in time) brings it back whole. Without them, the
    topic came back short of those partitions, which never register again:
    no lookup found it, and, every partition then ended, it stayed listed.
    The last ENDED_KEPT, in memory; forgotten once the name is published."""
    return catalog.__dict__.setdefault("_taken_out_topics", {})


def _ignore(future) -> None:
    if not future.cancelled():
        future.exception()  # (retrieved: not logged as never retrieved)


def _unsubscribe(catalog: Catalog, name: str, job: str, process: int) -> None:
    catalog._db.execute("DELETE FROM subscriptions WHERE topic = ? AND job = ? AND process = ?",
                        (name, job, process))


ENDED_KEPT = 1000  # ended topics remembered for the jobs that had found them (topic_lookup)


def _ended(catalog: Catalog) -> dict:
    """name -> {"topic": what a lookup answers, every partition ended;
    "readers": the jobs that had found it; "subscribers": its subscriptions
    then, (job, process)}, the last ENDED_KEPT topics to
    end (in memory: lost when the coordinator restarts)."""
    return catalog.__dict__.setdefault("_ended_topics", {})


def _readers(catalog: Catalog, name: str, uid: str) -> set:
    """The jobs that found publisher `uid` of topic `name`."""
    readers = catalog.__dict__.setdefault("_topic_readers", {})
    if name not in readers or readers[name][0] != uid:
        readers[name] = (uid, set())
    return readers[name][1]


def _carry_readers(catalog: Catalog, name: str, new: str) -> None:
    """A new publisher `new` of `name` after one that did not end its
    stream (a restarted job, whose registration it replaces or which its
    job's end took out of the catalog): the jobs that had found the old one
    count as having found the new one. A subscriber
    waiting for it (on_lost="wait") that looks it up only after it has
    ended whole then finds it ended, and ends, rather than waiting for
    ever (its lookups are answered "not found" for a topic that ended
    before it had found it)."""
    readers = catalog.__dict__.setdefault("_topic_readers", {})
    if name in readers and readers[name][0] != new:  # (an ended one's are gone: _keep_ended)
        readers[name] = (new, readers[name][1])


# seconds a reader (`_readers`) is remembered once its last connection to
# the coordinator has closed (`readers_left`): an app's run whose kernels
# look a topic up one after the other (one of them late: slow to start, or
# its lookup refused while the catalog was locked, asked again for up to
# 120 s, `kernel.topics._directory.BUSY_WAIT`), or whose connection broke
# and is opened again by its next request, still finds the topic ended.
# Remembered for good, one entry per app run (a notebook or dashboard
# subscribing again and again to a long-lived topic) grew the coordinator
# without bound.
READER_GRACE = 300.0


class Reading:
    """The readers (`topic_lookup`'s `job`) that looked topics up on one
    connection to the coordinator, counted (`_reader_connections`) until it
    closes (`readers_left`). (Touched on the catalog's thread only.)"""

    __slots__ = ("closed", "names")

    def __init__(self) -> None:
        self.names: set = set()
        self.closed = False


def _reader_connections(catalog: Catalog) -> dict:
    """{"live": reader -> its connections open, "gone": reader -> when its
    last closed (oldest first), "swept": when gone readers were last
    forgotten} (in memory, on the catalog's thread)."""
    return catalog.__dict__.setdefault("_reader_connections", {"live": {}, "gone": {}, "swept": 0.0})


def _reader_seen(catalog: Catalog, reader, reading: Reading | None) -> None:
    """(On the catalog's thread.) `reader` looked a topic up on connection
    `reading`: remembered while that connection is open."""
    if reading is None or not isinstance(reader, str):
        return  # (a call made without a connection, as some tests make it: remembered for good)
    state = _reader_connections(catalog)
    live, gone = state["live"], state["gone"]
    if reading.closed:  # (a lookup served after its connection's end was handled)
        if reader not in live:
            gone.pop(reader, None)
            gone[reader] = time.monotonic()
    elif reader not in reading.names:
        reading.names.add(reader)
        live[reader] = live.get(reader, 0) + 1
        gone.pop(reader, None)
    _forget_gone_readers(catalog)


def readers_left(catalog: Catalog, reading: Reading) -> None:
    """A connection closed (however: an app's run that ends closes it
    itself): its readers with no other connection open are forgotten
    READER_GRACE seconds later (`_forget_gone_readers`), unless one looks
    a topic up again meanwhile."""

    def left() -> None:
        reading.closed = True
        state = _reader_connections(catalog)
        live, gone, now = state["live"], state["gone"], time.monotonic()
        for reader in reading.names:
            if live[reader] > 1:
                live[reader] -= 1
            else:
                del live[reader]
                gone[reader] = now
        reading.names.clear()
        _forget_gone_readers(catalog)

    try:  # (not waited for: what fails leaves readers remembered, as before)
        catalog.call(left).add_done_callback(_ignore)
    except (CatalogError, RuntimeError):
        pass  # (closed: the coordinator stops)


def _forget_gone_readers(catalog: Catalog) -> None:
    """(On the catalog's thread.) The readers gone for READER_GRACE seconds
    leave every topic's readers, ended topics' too: but a job of the
    system that is still active (between two attempts: the next one is
    the same reader), looked at again a grace later. At most every tenth
    of the grace: each time reads every topic's readers."""
    state = _reader_connections(catalog)
    gone, now = state["gone"], time.monotonic()
    if not gone or now < state["swept"] + READER_GRACE / 10:
        return
    state["swept"] = now
    expired, active = set(), []
    for reader, since in gone.items():
        if now - since < READER_GRACE:
            break
        if not reader.startswith("app:") and _active_job(catalog, reader):
            active.append(reader)
        else:
            expired.add(reader)
    for reader in (*expired, *active):
        del gone[reader]
    for reader in active:
        gone[reader] = now
    if expired:
        for _, readers in catalog.__dict__.get("_topic_readers", {}).values():
            readers -= expired
        for ended in _ended(catalog).values():
            ended["readers"] -= expired


def _active_job(catalog: Catalog, job: str) -> bool:
    row = catalog._db.execute("SELECT status FROM jobs WHERE id = ?", (job,)).fetchone()
    return row is not None and row[0] in ACTIVE


def _keep_ended(catalog: Catalog, name: str, row: dict) -> None:
    readers = _readers(catalog, name, row["id"])
    catalog.__dict__["_topic_readers"].pop(name, None)
    ended = _ended(catalog)
    ended.pop(name, None)
    subscribers = set(catalog._db.execute("SELECT job, process FROM subscriptions WHERE topic = ?", (name,)))
    ended[name] = {"topic": {**row, "addresses": [ENDED] * row.get("partitions", 1)}, "readers": readers,
                   "subscribers": subscribers}
    while len(ended) > ENDED_KEPT:
        del ended[next(iter(ended))]


def _ended_job(catalog: Catalog, job: str) -> bool:
    """Is `job` a job of the system that has ended?"""
    row = catalog._db.execute("SELECT status FROM jobs WHERE id = ?", (job,)).fetchone()
    return row is not None and row[0] not in ACTIVE


async def _still_published(catalog: Catalog, name: str, row: dict, probe) -> bool:
    """Does `row`'s job still publish `name`? A job of the system: while it
    is active. An app: while one of its publisher's addresses answers as
    that publisher (`probe`: the links' handshake, whose meta carries the
    publisher's id). A killed app's registration stays behind, and the next
    publisher replaces it: where its port had been taken by another
    listener meanwhile, "accepts a connection" took that for the old
    publisher, and the name was refused for as long as the listener lived."""
    status, addresses = await catalog.call(_publisher, catalog, name, row["job"])
    if status is not None:
        return status in ACTIVE
    # (asked at once: one second at most in all, within the publisher's wait for the answer)
    ids = await asyncio.gather(*(probe(address, row.get("kind", "stream")) for (address,) in addresses
                                 if address != ENDED))
    return UNKNOWN in ids or (row.get("id") is not None and row["id"] in ids)


def _publisher(catalog: Catalog, name: str, job: str) -> tuple[str | None, list]:
    """(On the catalog's thread.) The job's status, if it is a job of the
    system, and its addresses for `name`: read in the call before the probe
    (another request may change the rows meanwhile, and must not have its own
    address probed)."""
    status = catalog._db.execute("SELECT status FROM jobs WHERE id = ?", (job,)).fetchone()
    addresses = catalog._db.execute("SELECT address FROM publications WHERE topic = ? AND job = ?",
                                    (name, job)).fetchall()
    return (status[0] if status is not None else None), addresses


PROBE_TIMEOUT = 1.0  # seconds a registered publisher has to answer as itself (`probe`)
UNKNOWN = object()  # `probe`: something answered, but who could not be told


async def probe(address: str, kind: str, *, secret: bytes, ssl) -> object:
    """The publisher id the topic (or service) server at `address` gives in
    the links' handshake, None where nothing of ours answers there, or
    UNKNOWN where a TLS handshake was refused."""
    from kernel.net._links import LinkError, connect
    from kernel.topics._publish import TOPIC_PATH
    from kernel.topics._services import SERVICE_PATH

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    url = f"{'https' if ssl is not True else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"
    try:
        ws, _, meta, http = await connect(url, secret, CLIENT, path=TOPIC_PATH if kind == "stream" else
                                          SERVICE_PATH, meta={"probe": True}, check_meta=False,
                                          timeout=PROBE_TIMEOUT, retry=False, ssl=ssl)
    except (LinkError, OSError, ValueError) as exc:
        # A TLS handshake refused (a server asking for a client certificate
        # that the coordinator's own, issued for serving, does not satisfy)
        # says nothing of who listens: taken for the old publisher, as a
        # server that answers, lest a live app's name be taken over.
        return UNKNOWN if tls_handshake_failure(exc) is not None else None
    try:
        await ws.close()
    finally:
        await http.close()
    return meta.get("id") if isinstance(meta, dict) else None


def listing(catalog: Catalog, only: str | None = None) -> list[dict]:
    """Every topic with its publisher (job and addresses) and subscribers
    (`status`); `only`: that topic's alone (`Catalog.call` with
    `topics=name`: a registration read every topic again, two queries
    each, and 2,000 partitions took a minute of the catalog's thread to
    register)."""
    db = catalog._db
    found = []
    rows = db.execute("SELECT * FROM topics ORDER BY name").fetchall() if only is None else \
        db.execute("SELECT * FROM topics WHERE name = ?", (only,)).fetchall()
    for name, job, created, schema in rows:
        info = json.loads(schema or "{}")
        addresses = [a for (a,) in db.execute(
            "SELECT address FROM publications WHERE topic = ? ORDER BY process", (name,))]
        subscribers = sorted({j for (j,) in db.execute(
            "SELECT job FROM subscriptions WHERE topic = ?", (name,))})
        found.append({"name": name, "job": job, "created": created, "kind": info.get("kind", "stream"),
                      "record_type": info.get("record_type"), "partitions": info.get("partitions", 1),
                      "publisher": addresses, "subscribers": subscribers})
    return found
