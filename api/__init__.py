"""The aiohttp ingress: auth, validation, rate limit, durable write, enqueue."""
