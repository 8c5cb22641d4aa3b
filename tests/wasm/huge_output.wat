;; Exercises: output cap — writes a 64 KiB buffer to stdout (fd 1) forever, ignoring errors.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  ;; page 0: iovec at 0, nwritten at 8; page 1 (offset 65536): 64 KiB of 'x'
  (memory (export "memory") 2)
  (func (export "_start")
    (memory.fill (i32.const 65536) (i32.const 0x78) (i32.const 65536))
    (i32.store (i32.const 0) (i32.const 65536))   ;; iov.buf
    (i32.store (i32.const 4) (i32.const 65536))   ;; iov.buf_len
    (loop $forever
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $forever))))
