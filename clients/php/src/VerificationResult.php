<?php

declare(strict_types=1);

namespace Plasm;

use Plasm\V1\ReceiptBody;

/**
 * What ReceiptVerifier found: valid only when there is at least one check and
 * every check passed. body is the decoded ReceiptBody, present once the
 * signature held and the payload decoded.
 */
final class VerificationResult
{
    /** @param list<VerificationCheck> $checks */
    public function __construct(
        public readonly bool $valid,
        public readonly array $checks,
        public readonly ?ReceiptBody $body,
        public readonly string $signerNodeId,
    ) {
    }

    public function check(string $name): ?VerificationCheck
    {
        foreach ($this->checks as $check) {
            if ($check->name === $name) {
                return $check;
            }
        }
        return null;
    }

    /** @return list<VerificationCheck> */
    public function failures(): array
    {
        return array_values(array_filter($this->checks, static fn (VerificationCheck $c): bool => !$c->passed));
    }
}
