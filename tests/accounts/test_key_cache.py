"""The key cache on its own: bounds, lifetimes, and what each change forgets."""

from __future__ import annotations

from infermesh.accounts.key_cache import MAX_NEGATIVE_TTL, CachedKey, KeyCache, KeyChange
from infermesh.accounts.records import Principal
from tests.accounts.conftest import Seconds


def entry(key_id: str, account_id: int = 1) -> CachedKey:
    principal = Principal(key_id=key_id, account_id=account_id, account_name="a", tier="free")
    return CachedKey(principal, expires_at=0.0, last_used_at=None)


def put(cache: KeyCache, key_hash: str, value: CachedKey | None) -> None:
    cache.put(key_hash, value, epoch=cache.epoch, started=cache.now())


def test_known_keys_are_bounded_least_recently_used_first() -> None:
    cache = KeyCache(ttl=60, size=3)
    for name in ("a", "b", "c"):
        put(cache, name, entry(name))
    assert cache.known("a") is not None  # a is now the most recently used
    put(cache, "d", entry("d"))
    assert len(cache) == 3
    assert cache.known("b") is None
    assert [name for name in "acd" if cache.known(name)] == ["a", "c", "d"]


def test_unknown_keys_are_bounded_on_their_own() -> None:
    cache = KeyCache(ttl=60, size=2)
    put(cache, "known", entry("k"))
    for number in range(10):
        put(cache, f"wrong{number}", None)
    assert len(cache) == 3  # one known key, and the last two unknown ones
    assert cache.known("known") is not None
    assert cache.unknown("wrong9") and cache.unknown("wrong8") and not cache.unknown("wrong0")


def test_entries_expire_after_the_ttl_unknown_ones_sooner() -> None:
    clock = Seconds()
    cache = KeyCache(ttl=5, size=10, clock=clock)
    put(cache, "known", entry("k"))
    put(cache, "wrong", None)
    assert cache.negative_ttl == MAX_NEGATIVE_TTL < 5
    clock.now += MAX_NEGATIVE_TTL
    assert not cache.unknown("wrong") and cache.known("known") is not None
    clock.now += 5 - MAX_NEGATIVE_TTL
    assert cache.known("known") is None
    assert len(cache) == 0


def test_a_short_ttl_bounds_unknown_keys_too() -> None:
    assert KeyCache(ttl=0.2).negative_ttl == 0.2


def test_a_revoked_key_is_forgotten_and_only_it() -> None:
    cache = KeyCache(ttl=60)
    put(cache, "h1", entry("key_1"))
    put(cache, "h2", entry("key_2"))
    cache.apply(KeyChange("key", "key_1"))
    assert cache.known("h1") is None and cache.known("h2") is not None


def test_an_account_change_forgets_every_key_of_the_account() -> None:
    cache = KeyCache(ttl=60)
    put(cache, "h1", entry("key_1", account_id=7))
    put(cache, "h2", entry("key_2", account_id=7))
    put(cache, "h3", entry("key_3", account_id=8))
    cache.apply(KeyChange("account", "7"))
    assert [h for h in ("h1", "h2", "h3") if cache.known(h)] == ["h3"]


def test_a_created_key_clears_the_unknown_keys() -> None:
    cache = KeyCache(ttl=60)
    put(cache, "wrong", None)
    put(cache, "h1", entry("key_1"))
    cache.apply(KeyChange("created"))
    assert not cache.unknown("wrong") and cache.known("h1") is not None


def test_a_lookup_that_raced_a_change_is_not_stored() -> None:
    cache = KeyCache(ttl=60)
    epoch, started = cache.epoch, cache.now()
    cache.apply(KeyChange("key", "key_1"))  # the key is revoked while its lookup runs
    cache.put("h1", entry("key_1"), epoch=epoch, started=started)
    cache.put("h2", None, epoch=epoch, started=started)
    assert len(cache) == 0


def test_clear_forgets_everything() -> None:
    cache = KeyCache(ttl=60)
    put(cache, "h1", entry("key_1"))
    put(cache, "wrong", None)
    cache.clear()
    assert len(cache) == 0


def test_changes_on_the_wire() -> None:
    for change in (KeyChange("key", "key_1"), KeyChange("account", "7"), KeyChange("created")):
        assert KeyChange.parse(change.wire()) == change
    for text in ("", "key", "key:", "account:", "created:x", "other:1", "junk"):
        assert KeyChange.parse(text) is None
