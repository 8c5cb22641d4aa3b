;; Exercises: a declared maximum (65536 pages, 4 GiB) far above the job's limit is no error: the module grows by 16 pages, within the limit, and succeeds.
(module
  (memory (export "memory") 1 65536)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1))
      (then unreachable))))
