;; Exercises: a job that runs for seconds, then succeeds — _start counts a 64-bit
;; counter down from 6e9 (about 8 fuel units a turn; a few seconds of CPU),
;; then writes "spun\n" to stdout and returns. Used where a test must act
;; while a job runs (killing its worker mid-job) and still see it finish.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "spun\n")
  (func (export "_start")
    (local $n i64)
    (local.set $n (i64.const 6000000000))
    (loop $spin
      (local.set $n (i64.sub (local.get $n) (i64.const 1)))
      (br_if $spin (i64.ne (local.get $n) (i64.const 0))))
    ;; one iovec at 0: {buf = 16, len = 5}; bytes written go to 8
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 5))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
