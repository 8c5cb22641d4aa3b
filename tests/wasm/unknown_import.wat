;; Exercises: link/instantiation failure — imports a function Plasm does not provide.
(module
  (import "env" "not_provided_by_plasm" (func $missing))
  (memory (export "memory") 1)
  (func (export "_start")
    (call $missing)))
