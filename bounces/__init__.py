"""`tidings bounces`: the SMTP server the bounce domain's MX points at (imports shared/ only)."""
