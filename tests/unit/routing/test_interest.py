"""RoomGraph: room mates, replacement, deletion, no leftovers."""

from __future__ import annotations

from federation_presence.ids import UserId
from federation_presence.routing.interest import RoomGraph

A, B, C, R = UserId("@a:x"), UserId("@b:x"), UserId("@c:x"), UserId("@r:y")


def test_users_sharing_a_room_are_room_mates() -> None:
    graph = RoomGraph()
    graph.set_room("!1", [A, B])
    graph.set_room("!2", [B, R])
    assert graph.room_mates(A) == {A, B}
    assert graph.room_mates(B) == {A, B, R}
    assert graph.share_a_room(A, B)
    assert not graph.share_a_room(A, R)
    assert graph.room_mates(C) == set()
    assert graph.room_mates_of_any([A, R]) == {A, B, R}


def test_setting_a_room_replaces_its_members() -> None:
    graph = RoomGraph()
    graph.set_room("!1", [A, B])
    graph.set_room("!1", [A, C])
    assert graph.members("!1") == frozenset({A, C})
    assert not graph.share_a_room(A, B)
    assert graph.room_mates(B) == set()


def test_deleting_or_emptying_a_room_leaves_nothing() -> None:
    graph = RoomGraph()
    graph.set_room("!1", [A, B])
    graph.set_room("!2", [A])
    assert graph.delete_room("!1")
    assert not graph.delete_room("!1")
    graph.set_room("!2", [])
    assert graph.room_count == 0
    assert graph.members("!2") is None
    assert graph._rooms_of == {}


def test_the_room_graph_and_the_synapse_shim_import_no_io() -> None:
    import json
    import subprocess
    import sys

    from tests.unit.test_core_is_pure import FORBIDDEN

    program = (
        "import json, sys\n"
        "import federation_presence.routing.interest, federation_presence.routing.synapse_compat\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(result.stdout))
    assert not [m for m in loaded if any(m == f or m.startswith(f"{f}.") for f in FORBIDDEN)]
