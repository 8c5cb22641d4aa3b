"""wasmtime sandbox: limits, WASI wiring and the compiled-module cache. Synchronous."""
