"""Sans-I/O core: identities, signed envelopes, receipts and input hashing.

Nothing here imports asyncio, grpc, wasmtime or generated code; time and
randomness come in as arguments.
"""
