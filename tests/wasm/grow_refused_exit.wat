;; Exercises: memory limit handled by the guest — its memory.grow is refused (-1), and it exits on purpose with proc_exit(3), which stays a NONZERO_EXIT.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 2000)) (i32.const -1))
      (then (call $proc_exit (i32.const 3))))
    unreachable))
