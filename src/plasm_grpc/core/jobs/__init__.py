"""Remote jobs, sans-I/O (issue 5): what the requester and the worker decide.

- `events`: a job's events as values (what Watch streams).
- `admission`: the worker's offer book: leases, capacity, fairness between
  requesters, and the reason for every decline.
- `placement`: ranking candidate workers.
- `session`: the requester's job session: offers, failover and the attempt
  record, as a state machine with the transitions in one table.

Nothing here reads a clock, draws randomness or does I/O: time and random
bytes come in as arguments.
"""
