;; Exercises: runtime trap — integer divide by zero.
(module
  (memory (export "memory") 1)
  (global $zero (mut i32) (i32.const 0))  ;; mutable so the division is not constant-folded
  (func (export "_start")
    (drop (i32.div_s (i32.const 1) (global.get $zero)))))
