"""The worker process: a pump claims due messages from Postgres, renders and sends them
through their channels, and records each outcome; arq runs only the reconciler's cron."""
