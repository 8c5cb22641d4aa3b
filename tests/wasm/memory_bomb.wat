;; Exercises: memory limit — grows linear memory one 64 KiB page at a time until refused, then traps (unreachable).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (block $refused
      (loop $grow
        (br_if $refused (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $grow)))
    unreachable))
