"""Job execution on this node: admission, the sandbox in worker threads, receipts."""
