<?php

declare(strict_types=1);

namespace Plasm;

use Plasm\V1\JobManifest;
use Plasm\V1\JobResult;
use Plasm\V1\Outcome;
use Plasm\V1\ReceiptBody;
use Plasm\V1\SignedEnvelope;

/**
 * Offline receipt verification with libsodium, the same checks as the Python
 * verifier (plasm_grpc.api.verify) and the Verify RPC, in the same order:
 *
 *  1. signature: the public key is 32 bytes, the signature 64, and the Ed25519
 *     signature holds over "plasm/receipt/v1" 0x00 payload, on the payload
 *     bytes exactly as received. Nothing else is looked at if it fails.
 *  2. decode: only then is the payload decoded as a ReceiptBody.
 *  3. well_formed, version: hashes and node ids are 64 lowercase hex, the
 *     outcome is known, version is 1 (reported only when they fail).
 *  4. signer: body.executor_node_id == hex(sha256(signer public key)).
 *  5. expected_executor, stdout, stderr, module, input: only for what the
 *     caller passes: the node it expected, and the bytes it holds.
 *
 * Nothing here trusts or contacts a node.
 */
final class ReceiptVerifier
{
    public const RECEIPT_DOMAIN = 'plasm/receipt/v1';
    public const RECEIPT_VERSION = 1;
    private const HEX64 = '/^[0-9a-f]{64}$/D';

    private function __construct()
    {
    }

    /**
     * @param string|null $expectedExecutorNodeId the node you expected to run the job (64 hex)
     * @param string|null $stdout, $stderr, $module bytes you hold, checked against the receipt's hashes
     * @param JobInput|JobManifest|array<string, mixed>|null $input what you sent, checked against
     *        input_sha256: a JobManifest, a JobInput, or ['args' => [...], 'env' => [...], 'stdin' => '...']
     */
    public static function verify(
        SignedEnvelope $receipt,
        ?string $expectedExecutorNodeId = null,
        ?string $stdout = null,
        ?string $stderr = null,
        ?string $module = null,
        JobInput|JobManifest|array|null $input = null,
    ): VerificationResult {
        $checks = [];
        $key = $receipt->getSignerPublicKey();
        $signer = self::signerNodeId($key);
        $problem = self::signatureProblem($receipt);
        if ($problem !== null) {
            $checks[] = new VerificationCheck('signature', false, $problem);
            return new VerificationResult(false, $checks, null, $signer);
        }
        $checks[] = new VerificationCheck(
            'signature',
            true,
            "valid Ed25519 signature under '" . self::RECEIPT_DOMAIN . "'",
        );

        $body = new ReceiptBody();
        try {
            $body->mergeFromString($receipt->getPayload());
        } catch (\Exception $e) {
            $detail = 'receipt payload is not a ReceiptBody: ' . $e->getMessage();
            $checks[] = new VerificationCheck('decode', false, $detail);
            return new VerificationResult(false, $checks, null, $signer);
        }

        $malformed = self::malformed($body);
        if ($malformed !== null) {
            $checks[] = new VerificationCheck('well_formed', false, "receipt body is malformed: $malformed");
        }
        if ($body->getVersion() !== self::RECEIPT_VERSION) {
            $checks[] = new VerificationCheck(
                'version',
                false,
                "receipt version {$body->getVersion()}, expected " . self::RECEIPT_VERSION,
            );
        }
        $executor = $body->getExecutorNodeId();
        $checks[] = $executor === $signer
            ? new VerificationCheck('signer', true, "signed by the executor $signer")
            : new VerificationCheck('signer', false, "signed by $signer but names executor " . ($executor ?: '(none)'));
        if ($expectedExecutorNodeId !== null && $expectedExecutorNodeId !== '') {
            $checks[] = new VerificationCheck(
                'expected_executor',
                $signer === $expectedExecutorNodeId,
                "signer $signer, expected $expectedExecutorNodeId",
            );
        }
        if ($stdout !== null) {
            $checks[] = self::hashCheck('stdout', $body->getStdoutSha256(), $stdout);
        }
        if ($stderr !== null) {
            $checks[] = self::hashCheck('stderr', $body->getStderrSha256(), $stderr);
        }
        if ($module !== null) {
            $checks[] = self::hashCheck('module', $body->getModuleSha256(), $module);
        }
        if ($input !== null) {
            $actual = JobInput::from($input)->sha256();
            $expected = $body->getInputSha256();
            $checks[] = new VerificationCheck(
                'input',
                $actual === $expected,
                "input sha256 $actual" . ($actual === $expected ? ' matches' : ", receipt says $expected"),
            );
        }

        $valid = array_reduce($checks, static fn (bool $ok, VerificationCheck $c): bool => $ok && $c->passed, true);
        return new VerificationResult($valid, $checks, $body, $signer);
    }

    /**
     * A Submit result checked against what it carries (stdout, stderr) and,
     * when given, the module and input you sent.
     *
     * @param JobInput|JobManifest|array<string, mixed>|null $input as for verify()
     */
    public static function verifyResult(
        JobResult $result,
        ?string $module = null,
        JobInput|JobManifest|array|null $input = null,
        ?string $expectedExecutorNodeId = null,
    ): VerificationResult {
        $receipt = $result->getReceipt() ?? new SignedEnvelope();
        return self::verify(
            $receipt,
            $expectedExecutorNodeId,
            $result->getStdout(),
            $result->getStderr(),
            $module,
            $input,
        );
    }

    /** The bare envelope check: Ed25519 over the receipt domain, 0x00 and the payload. */
    public static function checkSignature(SignedEnvelope $receipt): bool
    {
        return self::signatureProblem($receipt) === null;
    }

    /** hex(sha256(public key)); "" when the key is not 32 bytes. */
    public static function signerNodeId(string $publicKey): string
    {
        return strlen($publicKey) === SODIUM_CRYPTO_SIGN_PUBLICKEYBYTES ? hash('sha256', $publicKey) : '';
    }

    private static function signatureProblem(SignedEnvelope $receipt): ?string
    {
        $key = $receipt->getSignerPublicKey();
        $signature = $receipt->getSignature();
        if (strlen($key) !== SODIUM_CRYPTO_SIGN_PUBLICKEYBYTES) {
            return 'signer public key must be 32 bytes, got ' . strlen($key);
        }
        if (strlen($signature) !== SODIUM_CRYPTO_SIGN_BYTES) {
            return 'signature must be 64 bytes, got ' . strlen($signature);
        }
        $signed = self::RECEIPT_DOMAIN . "\0" . $receipt->getPayload();
        try {
            $ok = sodium_crypto_sign_verify_detached($signature, $signed, $key);
        } catch (\SodiumException $e) {
            $ok = false;
        }
        return $ok ? null : "signature does not verify under domain '" . self::RECEIPT_DOMAIN . "'";
    }

    private static function malformed(ReceiptBody $body): ?string
    {
        try {
            Outcome::name($body->getOutcome());
        } catch (\UnexpectedValueException $e) {
            return "unknown outcome {$body->getOutcome()}";
        }
        $hex = [
            'module_sha256' => $body->getModuleSha256(),
            'input_sha256' => $body->getInputSha256(),
            'stdout_sha256' => $body->getStdoutSha256(),
            'stderr_sha256' => $body->getStderrSha256(),
            'executor_node_id' => $body->getExecutorNodeId(),
        ];
        if ($body->getRequesterNodeId() !== '') {
            $hex['requester_node_id'] = $body->getRequesterNodeId();
        }
        foreach ($hex as $name => $value) {
            if (!preg_match(self::HEX64, $value)) {
                return "$name must be 64 lowercase hex characters";
            }
        }
        return null;
    }

    private static function hashCheck(string $name, string $expected, string $data): VerificationCheck
    {
        $actual = hash('sha256', $data);
        return $actual === $expected
            ? new VerificationCheck($name, true, "sha256 $actual matches the receipt")
            : new VerificationCheck($name, false, "sha256 $actual but the receipt says $expected");
    }
}
