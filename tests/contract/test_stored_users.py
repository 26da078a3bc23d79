"""SQLite's read-through filter: ids certainly not stored are not read, stored ones always are."""

from __future__ import annotations

from pathlib import Path

from federation_presence.presence.states import PresenceState
from federation_presence.store.sqlite import SqliteStore
from tests.contract.samples import notified, user

OFF = PresenceState.OFFLINE


async def _opened(path: Path) -> SqliteStore:
    store = SqliteStore(path, idle_fold_delay_s=None)
    await store.open()
    return store


async def test_users_stored_before_open_are_read_and_others_are_not(tmp_path: Path) -> None:
    path = tmp_path / "filter.db"
    first = await _opened(path)
    stored = [user(f"@u{i}:remote.example", OFF) for i in range(2_000)]
    await first.apply(notified(*stored))
    await first.close()

    store = await _opened(path)
    try:
        await store.users_scanned.wait()
        asked = ["@u7:remote.example", "@never:remote.example", "@u1999:remote.example"]
        found = await store.get_users(asked)
        assert sorted(u.user_id for u in found) == ["@u1999:remote.example", "@u7:remote.example"]
        # 3 probes in 8 MiB: a false positive here is ~1e-12
        assert store.stats.user_reads_filtered == 1
        assert await store.get_users([f"@new{i}:x" for i in range(100)]) == []
        assert store.stats.user_reads_filtered == 101
    finally:
        await store.close()


async def test_a_user_applied_after_the_scan_is_read(tmp_path: Path) -> None:
    store = await _opened(tmp_path / "filter.db")
    try:
        await store.users_scanned.wait()
        assert await store.get_users(["@late:x"]) == []
        late = user("@late:x", PresenceState.BUSY)
        await store.apply(notified(late))
        assert await store.get_users(["@late:x"]) == [late]
    finally:
        await store.close()


async def test_another_writer_on_the_file_turns_the_filter_off(tmp_path: Path) -> None:
    path = tmp_path / "filter.db"
    store = await _opened(path)
    try:
        await store.users_scanned.wait()
        other = await _opened(path)
        elsewhere = user("@elsewhere:x", OFF)
        await other.apply(notified(elsewhere))
        await other.close()  # folds it into the table: this store's journal never saw it

        await store.apply(notified(user("@any:x")))  # its transaction notices the other writer

        assert await store.get_users(["@elsewhere:x"]) == [elsewhere]
        filtered = store.stats.user_reads_filtered
        assert await store.get_users(["@never:x"]) == []
        assert store.stats.user_reads_filtered == filtered  # off: every id is read
    finally:
        await store.close()


async def test_without_the_filter_every_id_is_read(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "filter.db", user_filter_bits_log2=None)
    await store.open()
    try:
        assert await store.get_users(["@never:x"]) == []
        assert store.stats.user_reads_filtered == 0
        assert not store.users_scanned.is_set()
    finally:
        await store.close()
