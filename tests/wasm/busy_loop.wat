;; Exercises: cancelling a running guest — _start spins forever without host calls,
;; calling a wasm function each turn. The call makes wasmtime write the fuel it
;; counts back to the store, so a stopped job's fuel_consumed shows it ran
;; (in infinite_loop.wat's bare `br` loop the count stays in a register).
(module
  (memory (export "memory") 1)
  (func $turn)
  (func (export "_start")
    (loop $spin
      (call $turn)
      (br $spin))))
