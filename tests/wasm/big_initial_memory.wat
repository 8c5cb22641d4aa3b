;; Exercises: memory limit at instantiation — 4096 initial pages (256 MiB) of linear memory.
(module
  (memory (export "memory") 4096)
  (func (export "_start")))
