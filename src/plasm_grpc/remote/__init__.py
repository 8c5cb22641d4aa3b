"""Remote jobs over the overlay (issue 5): the asyncio adapters around core.jobs.

- `worker`: a node's `plasm.v1.Jobs/*` overlay handlers: offers, leases, runs,
  status and cancel, on the node's `JobExecutor`.
- `router`: the requester: `JobRouter.submit` places a job (local, a named
  peer, or automatically through the DHT), fails over, checks the worker's
  receipt before anything is answered, and publishes the job's events.
- `messages`: the overlay messages' protobuf conversions and size checks.

This layer sits above `api` and `net` (it needs the overlay, the DHT and
receipt verification) and below `daemon`, which wires it in.
"""
