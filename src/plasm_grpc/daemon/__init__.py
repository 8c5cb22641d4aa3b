"""plasmd: configuration, wiring, signals and readiness."""
