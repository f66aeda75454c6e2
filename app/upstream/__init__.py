"""Every use of a private name of faust-streaming, mode-streaming and aiokafka, in one place.

delayq overrides or copies a few private parts of these libraries, each for a measured gain or a
correctness fix; the Tansu workarounds are apart, in app/tansu_compat.py. Nothing outside this
package touches a private name of the three libraries:

- :mod:`app.upstream.consumer`: the fetch-to-stream hand-off (a fork of Faust's
  ``Consumer._drain_messages``), commits refused after a lost changelog write (``_commit``),
  commits that never pass a held offset (``_new_offset``, upstream #606), and a typed
  ``_add_gap`` for the agent;
- :mod:`app.upstream.producer`: forwards and changelog records appended to aiokafka's record
  batches (``_message_accumulator``, ``_wait_on_metadata``, ``_batches``, ``_append_batch``);
- :mod:`app.upstream.faust_app`: the app with that transport;
- :mod:`app.upstream.recovery`: the bulk restore's hooks into Faust's recovery, and the standby
  records kept through its last flow resume;
- :mod:`app.upstream.rocksdb`: the partition databases of a Faust RocksDB table.

Importing any of them first checks that the installed libraries are the versions these overrides
were written against (the pins in pyproject.toml); tests/unit/test_upstream_contract.py fails when
an overridden or copied upstream function changes.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from app.errors import UnsupportedLibraryVersion

__all__ = ["PINNED", "check_versions"]

#: The versions the overrides were written against (as pinned in pyproject.toml).
PINNED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}


def check_versions() -> None:
    """Raise :class:`UnsupportedLibraryVersion` unless every library is at its pinned version."""
    found: dict[str, str] = {}
    for name in PINNED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    wrong = [
        f"{name} {found[name]} (needs {pin})" for name, pin in PINNED.items() if found[name] != pin
    ]
    if wrong:
        raise UnsupportedLibraryVersion(
            "delayq overrides private parts of these libraries and was not written for "
            + ", ".join(wrong)
            + ": install the versions pinned in pyproject.toml"
        )


check_versions()
