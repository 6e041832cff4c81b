"""Redis store (redis-py's asyncio client with hiredis): one cache for several routers.

Each entry is a hash under `nomyo:cache:e:<scope tag>:<model tag>:<hash>` (the exact key) (v: the entry, x: its
vector, c: its context key, m/s: model and scope, w: the word-order guard) with Redis' own expiry as the TTL, so every
router sharing the server sees an entry the moment one stores it, and expiry costs nothing.
Invalidation by model or scope is a SCAN over the tags in the key names. Stored vectors are
also appended to a capped stream that every router follows, so their semantic indexes agree. The size bound is
Redis' own: give the server a `maxmemory` with an `allkeys-lru` (or `volatile-lru`) policy.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from .base import Record, Totals, tag

PREFIX = "nomyo:cache:e:"
STREAM = "nomyo:cache:vectors"  # every stored vector, for the other routers' semantic indexes
STREAM_LENGTH = 100_000  # about; older news is in the entries themselves (read at start)
FOLLOW_BLOCK_MS = 1000
SCAN_BATCH = 500


def key_name(key: str) -> str:
    """Exact keys start with their scope and model tags (see `request.exact_key`)."""
    return PREFIX + key


class RedisStore:
    name = "redis"

    def __init__(self, url: str):
        self.url = url
        self.client: aioredis.Redis | None = None

    async def open(self) -> None:
        self.client = aioredis.from_url(self.url, socket_connect_timeout=1.0, socket_timeout=2.0,
                                        retry_on_timeout=False)

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.aclose()

    def _redis(self) -> aioredis.Redis:
        if self.client is None:
            raise ConnectionError("the cache's Redis client is not open")
        return self.client

    async def get(self, key: str) -> bytes | None:
        return await self._redis().hget(key_name(key), "v")

    async def put(self, record: Record) -> list[str]:
        name = key_name(record.key)
        fields = {"v": record.value, "c": record.context, "m": record.model, "s": record.scope, "w": record.words}
        if record.vector is not None:
            fields["x"] = record.vector
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.delete(name)
            pipe.hset(name, mapping=fields)
            if record.expires_at is not None:
                pipe.pexpireat(name, int(record.expires_at * 1000))
            if record.vector is not None:
                news = {"k": record.key, "c": record.context, "x": record.vector, "w": record.words,
                        "e": repr(record.expires_at) if record.expires_at is not None else ""}
                pipe.xadd(STREAM, news, maxlen=STREAM_LENGTH, approximate=True)
            await pipe.execute()
        return []

    async def follow(self) -> AsyncIterator[Record]:
        """The vectors other routers store from now on (so a paraphrase of a question another
        router answered is a hit here too). Raises when Redis fails; the caller retries."""

        last = "$"
        while True:
            replies = await self._redis().xread({STREAM: last}, block=FOLLOW_BLOCK_MS, count=100)
            for _stream, items in replies or ():
                for message_id, fields in items:
                    last = message_id
                    expires = fields.get(b"e") or b""
                    yield Record(_text(fields.get(b"k")), b"", context=_text(fields.get(b"c")),
                                 vector=fields.get(b"x"), expires_at=float(expires) if expires else None,
                                 words=_text(fields.get(b"w")))

    async def delete(self, keys: list[str]) -> None:
        if keys:
            await self._redis().unlink(*(key_name(key) for key in keys))

    async def invalidate(self, model: str | None = None, scope: str | None = None) -> int:
        pattern = f"{PREFIX}{tag(scope) if scope is not None else '*'}:{tag(model) if model is not None else '*'}:*"
        dropped = 0
        batch: list[bytes] = []
        async for name in self._redis().scan_iter(match=pattern, count=SCAN_BATCH):
            batch.append(name)
            if len(batch) >= SCAN_BATCH:
                dropped += await self._redis().unlink(*batch)
                batch = []
        if batch:
            dropped += await self._redis().unlink(*batch)
        return dropped

    async def totals(self) -> Totals:
        """Counted with SCAN (for the stats endpoint and a periodic refresh, never per request)."""

        entries = size = 0
        async for names in self._batches():
            async with self._redis().pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hstrlen(name, "v")
                    pipe.hstrlen(name, "x")
                lengths = await pipe.execute()
            entries += len(names)
            size += sum(lengths) + sum(len(name) for name in names)
        return Totals(entries, size, 0)

    async def _batches(self) -> AsyncIterator[list[bytes]]:
        batch: list[bytes] = []
        async for name in self._redis().scan_iter(match=f"{PREFIX}*", count=SCAN_BATCH):
            batch.append(name)
            if len(batch) >= SCAN_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    async def vectors(self) -> AsyncIterator[Record]:
        async for names in self._batches():
            async with self._redis().pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hmget(name, "x", "c", "m", "s", "w")
                    pipe.pttl(name)
                replies = await pipe.execute()
            for name, (vector, context, model, scope, words), ttl in zip(names, replies[::2], replies[1::2],
                                                                        strict=True):
                if vector is not None and context is not None:
                    yield Record(name.decode().removeprefix(PREFIX), b"", _text(model), _text(scope),
                                 _text(context), vector, _expiry(ttl), _text(words))


def _text(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


def _expiry(pttl: int) -> float | None:
    return None if pttl is None or pttl < 0 else time.time() + pttl / 1000
