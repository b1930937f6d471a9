"""Build the aiohttp application; resources are made once in its cleanup context."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

# Importing the route modules registers their routes (see api.routing.route).
from api import console, docs, health, whatsapp_webhooks  # noqa: F401
from api.auth import KeyCache, KeyUsage
from api.broadcasts import api_keys, batch, broadcasts, contacts, messages, send  # noqa: F401
from api.broadcasts import domains as sending_domain_routes  # noqa: F401
from api.broadcasts import webhooks as outbound_webhooks  # noqa: F401
from api.middleware import request_middleware
from api.ratelimit import RateLimiter
from api.routing import WEBHOOK_MAX_BODY_BYTES, add_routes
from api.state import STATE, State
from api.transactionals import batch as transactionals_batch  # noqa: F401
from api.transactionals import pages, subscribers, templates, transactionals  # noqa: F401
from shared import db, redis_clients, templating
from shared.accept import Acceptor
from shared.broadcast_cache import BroadcastCache
from shared.config import Settings
from shared.contact_cache import ContactCache
from shared.redis_keys import RedisKeys
from shared.send_waiter import SendWaiter

# The accept service commits one batch at a time (its two kinds of send side by side); a
# connection beyond those covers a broken one.
SEND_POOL_SIZE = 3


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[request_middleware], client_max_size=WEBHOOK_MAX_BODY_BYTES)
    add_routes(app)
    # The console (/console/): server-rendered pages over the same domain code (api/console).
    console.setup(app)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await db.create_pool(
            settings.database_url, min_size=settings.db_pool_min_size, max_size=settings.db_pool_max_size
        )
        # The batched commits of accepted sends (one batch at a time) on sessions of their own that
        # use a generic plan: with custom plans Postgres re-plans that large statement for every
        # batch (measured: ~10 % less Postgres CPU per trigger). Only there: generic
        # plans could be worse for the listing queries' optional filters.
        send_pool = await db.create_pool(
            settings.database_url,
            min_size=1,
            max_size=SEND_POOL_SIZE,
            server_settings={"plan_cache_mode": "force_generic_plan"},
        )
        # Commands wait at most REDIS_TIMEOUT_S; the waiter's subscription blocks on reads by
        # design, so it has a client of its own without that timeout.
        redis = redis_clients.commands(settings.redis_url, settings.redis_timeout_s)
        subscriber = redis_clients.subscriber(settings.redis_url)
        keys = RedisKeys(settings.redis_prefix)
        waiter = SendWaiter(subscriber, keys)
        await waiter.start()
        # Large Liquid sources are checked in a process of their own (never on this loop).
        await asyncio.to_thread(templating.start_checker)
        broadcast_cache = BroadcastCache(settings.broadcast_cache_ttl_s)
        contact_cache = ContactCache(settings.broadcast_cache_ttl_s)
        app[STATE] = State(
            settings=settings,
            pool=pool,
            redis=redis,
            keys=keys,
            key_cache=KeyCache(settings.key_cache_ttl_s),
            rate_limiter=RateLimiter(redis, keys),
            waiter=waiter,
            acceptor=Acceptor(
                pool,
                redis,
                keys,
                settings,
                waiter,
                commit_pool=send_pool,
                broadcast_cache=broadcast_cache,
                contact_cache=contact_cache,
            ),
            broadcast_cache=broadcast_cache,
            contact_cache=contact_cache,
            key_usage=KeyUsage(pool),
        )
        app[STATE].key_usage.start()
        yield
        await app[STATE].key_usage.close()
        await app[STATE].acceptor.close()
        await waiter.close()
        await subscriber.aclose()
        await redis.aclose()
        await send_pool.close()
        await pool.close()
        await asyncio.to_thread(templating.stop_checker)

    app.cleanup_ctx.append(resources)
    return app
