;; Exercises: memory limit at compile time — 65536 initial pages (4 GiB), more than any job may have (the pooling allocator refuses the module itself).
(module
  (memory (export "memory") 65536)
  (func (export "_start")))
