"""Process-wide resources of the API, made once in the app's cleanup context."""

from __future__ import annotations

import dataclasses

from aiohttp import web
from redis.asyncio import Redis

from api.auth import KeyCache, KeyUsage
from api.ratelimit import RateLimiter
from shared import db
from shared.accept import Acceptor
from shared.broadcast_cache import BroadcastCache
from shared.config import Settings
from shared.contact_cache import ContactCache
from shared.redis_keys import RedisKeys
from shared.send_waiter import SendWaiter


@dataclasses.dataclass(slots=True)
class State:
    settings: Settings
    pool: db.Pool
    redis: Redis
    keys: RedisKeys
    key_cache: KeyCache
    rate_limiter: RateLimiter
    waiter: SendWaiter
    acceptor: Acceptor
    broadcast_cache: BroadcastCache
    contact_cache: ContactCache
    # Keys' last use, written in the background (api.auth).
    key_usage: KeyUsage


STATE = web.AppKey("state", State)
