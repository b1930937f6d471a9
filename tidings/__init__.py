"""The `tidings` command: the CLI, `tidings send` and `tidings dev`. Nothing imports it."""
