;; Exercises: stack overflow trap — unbounded self-recursion with locals kept live across the call.
(module
  (memory (export "memory") 1)
  (func $recurse (param $n i64) (result i64)
    (local $a i64) (local $b i64) (local $c i64) (local $d i64)
    (local.set $a (i64.add (local.get $n) (i64.const 1)))
    (local.set $b (i64.mul (local.get $a) (i64.const 3)))
    (local.set $c (i64.xor (local.get $b) (local.get $n)))
    (local.set $d (i64.sub (local.get $c) (local.get $a)))
    ;; use the locals after the call so they must be preserved in the frame
    (i64.add
      (call $recurse (local.get $a))
      (i64.add (i64.add (local.get $a) (local.get $b))
               (i64.add (local.get $c) (local.get $d)))))
  (func (export "_start")
    (drop (call $recurse (i64.const 0)))))
