<?php

declare(strict_types=1);

namespace Plasm;

/**
 * One verification step and its result: "signature", "decode", "well_formed",
 * "version", "signer", "expected_executor", "stdout", "stderr", "module",
 * "input" (the names the Python verifier and the Verify RPC use).
 */
final class VerificationCheck
{
    public function __construct(
        public readonly string $name,
        public readonly bool $passed,
        public readonly string $detail,
    ) {
    }

    public function __toString(): string
    {
        return sprintf('%-17s %s  %s', $this->name, $this->passed ? 'ok  ' : 'FAIL', $this->detail);
    }
}
