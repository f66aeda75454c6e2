"""The upstream functions app/upstream/ overrides, copies or calls are the ones it was written for.

An upgrade of faust-streaming, mode-streaming or aiokafka that changes one of them fails here
instead of silently changing delivery. Fix: read the new upstream code against the override
named in app/upstream/, adapt it, then update the signature or hash below.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import tomllib
from pathlib import Path
from typing import Any

import pytest

from app.errors import UnsupportedLibraryVersion
from app.upstream import PINNED, check_versions

ROOT = Path(__file__).resolve().parents[2]

#: Copied or replaced in app/upstream/: signature and a hash of the source both must match.
COPIED = {
    "faust.transport.consumer:Consumer._drain_messages": (
        "(self, fetcher: mode.types.services.ServiceT) -> None",
        "44a2500309e83c63",
    ),
    "faust.transport.consumer:Consumer._new_offset": (
        "(self, tp: faust.types.tuples.TP) -> Optional[int]",
        "1d2c7ea89a7ad4f1",
    ),
    "aiokafka.producer.producer:AIOKafkaProducer.send": (
        "(self, topic, value=None, key=None, partition=None, timestamp_ms=None, headers=None)",
        "08ce81263f439838",
    ),
    "aiokafka.producer.message_accumulator:MessageAccumulator.add_message": (
        "(self, tp, key, value, timeout, timestamp_ms=None, "
        "headers: collections.abc.Sequence = [])",
        "56ff7e6c19185f83",
    ),
    "faust.app.base:App._new_transport": (
        "(self) -> faust.types.transports.TransportT",
        "42db531312dd776f",
    ),
    "faust.tables.manager:TableManager.changelog_queue": (
        "(self) -> mode.utils.queues.ThrowableQueue",
        "9c7f4cac57ef1706",
    ),
    "faust.tables.manager:TableManager.recovery": (
        "(self) -> faust.tables.recovery.Recovery",
        "f0bf5de78b4c3d23",
    ),
    # Not copied, relied on: it applies a replayed event's message.key and .value as they are
    # when it runs, which app.upstream.recovery.void_replayed rewrites.
    "faust.stores.rocksdb:Store.apply_changelog_batch": (
        "(self, batch: Iterable[faust.types.events.EventT], to_key: Callable[[Any], Any], "
        "to_value: Callable[[Any], Any]) -> None",
        "ea3344d369fc4ab5",
    ),
    "faust.stores.rocksdb:Store.set_persisted_offset": (
        "(self, tp: faust.types.tuples.TP, offset: int) -> None",
        "b4c811926678346e",
    ),
}

#: Extended (super() is called) or called by app/upstream/: the signature must match.
CALLED_OR_EXTENDED = {
    "faust.transport.consumer:Consumer._add_gap": (
        "(self, tp: faust.types.tuples.TP, offset_from: int, offset_to: int) -> None"
    ),
    "faust.transport.consumer:ThreadDelegateConsumer._commit": (
        "(self, offsets: Mapping[faust.types.tuples.TP, int]) -> bool"
    ),
    "faust.transport.drivers.aiokafka:Producer._ensure_producer": (
        "(self) -> aiokafka.producer.producer.AIOKafkaProducer"
    ),
    "aiokafka.producer.producer:AIOKafkaProducer._partition": (
        "(self, topic, partition, key, value, serialized_key, serialized_value)"
    ),
    "aiokafka.producer.message_accumulator:MessageAccumulator._append_batch": (
        "(self, builder, tp)"
    ),
    "aiokafka.client:AIOKafkaClient._wait_on_metadata": "(self, topic)",
    "faust.tables.recovery:Recovery._build_offsets": (
        "(self, consumer: faust.types.transports.ConsumerT, tps: Set[faust.types.tuples.TP], "
        "destination: Counter[faust.types.tuples.TP], title: str) -> None"
    ),
    "faust.tables.recovery:Recovery._seek_offsets": (
        "(self, consumer: faust.types.transports.ConsumerT, tps: Set[faust.types.tuples.TP], "
        "offsets: Counter[faust.types.tuples.TP], title: str) -> None"
    ),
    "faust.tables.recovery:Recovery.on_recovery_completed": (
        "(self, generation_id: int = 0) -> None"
    ),
    "faust.stores.rocksdb:Store._db_for_partition": "(self, partition: int) -> Rdict",
    "mode.utils.queues:ThrowableQueue.clear": "(self) -> None",
}


def _resolve(name: str) -> Any:
    module, path = name.split(":")
    found: Any = importlib.import_module(module)
    for part in path.split("."):
        found = (
            inspect.getattr_static(found, part) if inspect.isclass(found) else getattr(found, part)
        )
    if isinstance(found, property):
        return found.fget
    return getattr(found, "__func__", found)


@pytest.mark.parametrize("name", sorted(COPIED))
def test_a_copied_upstream_function_is_the_one_it_was_copied_from(name: str) -> None:
    function = _resolve(name)
    signature, digest = COPIED[name]
    assert str(inspect.signature(function)) == signature
    source = inspect.getsource(function).encode()
    assert hashlib.sha256(source).hexdigest()[:16] == digest, f"{name} changed upstream"


@pytest.mark.parametrize("name", sorted(CALLED_OR_EXTENDED))
def test_an_extended_or_called_upstream_function_keeps_its_signature(name: str) -> None:
    assert str(inspect.signature(_resolve(name))) == CALLED_OR_EXTENDED[name]


def test_the_checked_versions_are_the_ones_pyproject_pins() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = dict(d.split("==") for d in pyproject["project"]["dependencies"] if "==" in d)
    assert {name: pins[name] for name in PINNED} == PINNED


def test_another_library_version_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an aiokafka other than the pinned one
    import app.upstream as upstream

    real = upstream.version
    monkeypatch.setattr(
        upstream, "version", lambda name: "0.15.0" if name == "aiokafka" else real(name)
    )
    # When the versions are checked, Then one line names the library and both versions
    with pytest.raises(UnsupportedLibraryVersion) as refused:
        check_versions()
    message = str(refused.value)
    assert "aiokafka 0.15.0 (needs 0.14.0)" in message
    assert "\n" not in message
