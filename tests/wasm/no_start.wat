;; Exercises: missing entry point — valid module exporting only `memory`, no `_start`.
(module
  (memory (export "memory") 1))
