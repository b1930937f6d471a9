"""Code used by both the api and the worker: config, database, domain, templating, logging."""
