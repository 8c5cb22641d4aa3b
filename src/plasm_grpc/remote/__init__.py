"""Remote jobs over the overlay (issue 5): the asyncio adapters around core.jobs.

The worker side:

- `worker`: a node's `plasm.v1.Jobs/*` overlay handlers: offers, leases, runs,
  status and cancel, on the node's `JobExecutor`.

The requester side, `router` and the pieces it drives:

- `router`: `JobRouter.submit` places a job (local, a named peer, or
  automatically through the DHT), fails over, and publishes the job's events,
  pumping a `core.jobs.session.JobSession`.
- `placement`: finding and ranking candidate workers; what this node knows
  about them (our jobs in flight, distrusted workers, cached lookups).
- `attempts`: one job on one worker: dial, offer, run with status checks,
  cancel.
- `verification`: a worker's decline, result and receipt checked against what
  was sent.
- `outbound`: the job as sent (`OutboundJob`) and the JobOffer/JobRun built
  from it.

Shared: `messages` (the overlay messages' protobuf conversions and size
checks) and `futures`.

This layer sits above `api` and `net` (it needs the overlay, the DHT and
receipt verification) and below `daemon`, which wires it in.
"""
