;; Exercises: wall-clock/fuel timeout — _start spins forever without host calls.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $spin
      (br $spin))))
