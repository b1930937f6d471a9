"""The Broadcasts API (`/orgs/{org_id}/...`): broadcasts and their templates, contacts,
messages, and the send endpoint."""
