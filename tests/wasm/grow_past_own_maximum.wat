;; Exercises: a grow refused by the module's own declared maximum (2 pages), far below the job's limit, then a trap: a TRAP, not a memory limit.
(module
  (memory (export "memory") 1 2)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 5)) (i32.const -1))
      (then unreachable))))
