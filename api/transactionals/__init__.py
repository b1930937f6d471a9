"""The Transactionals API (`/api/v1`): transactional emails, subscribers, templates, and the
public pages their emails link to (`/confirm`, `/unsubscribe`)."""
