;; Exercises: memory limit — one memory.grow of 2000 pages (125 MiB) is refused by the job's limit (it returns -1), then the guest traps (unreachable), as C's abort() after a failed malloc.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 2000)) (i32.const -1))
      (then unreachable))))
