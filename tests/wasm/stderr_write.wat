;; Exercises: separate stdout/stderr capture with a normal return (exit 0).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "to stderr\n")
  (data (i32.const 80) "to stdout\n")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $write (i32.const 2) (i32.const 64) (i32.const 10))
    (call $write (i32.const 1) (i32.const 80) (i32.const 10))))
