// What the offline and the live suites both need: the PlasmError a call fails with.
import assert from "node:assert/strict";

import { PlasmError } from "../src/index.js";

/** Await `promise`, which must reject with a PlasmError; that error. */
export async function rejectsWith(promise: Promise<unknown>): Promise<PlasmError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof PlasmError, `not a PlasmError: ${String(err)}`);
    return err;
  }
  assert.fail("the call did not fail");
}
