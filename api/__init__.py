"""The api process: the Broadcasts API (`broadcasts/`) and the Transactionals API
(`transactionals/`, under `/api/v1`) beside the machinery they share (routing, auth, rate
limit, idempotency, error answers). A send is accepted through `shared.accept`: committed
to Postgres, which is the delivery queue, and the workers rung awake."""
