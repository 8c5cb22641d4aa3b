<?php

/**
 * Submit hello.wasm to a Plasm node, print its output, and check the signed
 * receipt here, offline, without asking any node whether it is genuine.
 *
 *     php clients/php/examples/remote_test.php [path/to/hello.wasm]
 *
 * PLASM_ADDR: the node ("127.0.0.1:50151" by default; "unix:/path/to.sock" works too).
 * PLASM_EXPECT_EXECUTOR: optional node id (64 hex) the job must have run on.
 * Exits 0 when everything checked out, 1 otherwise.
 */

declare(strict_types=1);

require dirname(__DIR__) . '/autoload.php';

use Plasm\Client;
use Plasm\Exception\RpcException;
use Plasm\ReceiptVerifier;
use Plasm\V1\Outcome;
use Plasm\V1\SignedEnvelope;
use Plasm\VerificationResult;

const GREETING = 'Hello, World';

function show(VerificationResult $result): void
{
    foreach ($result->checks as $check) {
        echo '  ', $check, "\n";
    }
}

$target = getenv('PLASM_ADDR') ?: Client::DEFAULT_TARGET;
$modulePath = $argv[1] ?? dirname(__DIR__, 3) . '/examples/build/hello.wasm';
$module = @file_get_contents($modulePath);
if ($module === false) {
    fwrite(STDERR, "cannot read $modulePath (build it with scripts/build-examples.sh)\n");
    exit(1);
}
$args = [basename($modulePath)];
$expected = getenv('PLASM_EXPECT_EXECUTOR') ?: null;

try {
    $client = new Client($target);
    $node = $client->nodeInfo();
    echo "node       {$target}: {$node->getNodeId()} (plasmd {$node->getVersion()})\n";
    $response = $client->submit($module, args: $args, stdin: GREETING);
} catch (RpcException $e) {
    fwrite(STDERR, "call to $target failed: {$e->getMessage()}\n");
    exit(1);
}
$result = $response->getResult();
$receipt = $result->getReceipt() ?? new SignedEnvelope();

echo "job        {$result->getJobId()}\n";
echo 'outcome    ', Outcome::name($result->getOutcome()), ", exit code {$result->getExitCode()}\n";
echo 'stdin      ', json_encode(GREETING), "\n";
echo 'stdout     ', json_encode($result->getStdout(), JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE), "\n";

// The receipt, checked here with libsodium: nothing below asks a node.
$verification = ReceiptVerifier::verifyResult($result, $module, ['args' => $args, 'stdin' => GREETING], $expected);
$body = $verification->body;
$domain = ReceiptVerifier::RECEIPT_DOMAIN;
echo "\nreceipt checked offline (Ed25519 over \"$domain\\0\" + payload, then the hashes):\n";
show($verification);
$where = $verification->signerNodeId === $node->getNodeId() ? 'the node we asked' : 'a peer of the node we asked';
echo "executor   {$verification->signerNodeId} ($where)\n";
if ($body !== null) {
    echo "requester  {$body->getRequesterNodeId()}\n";
    $runtime = $body->getRuntime();
    echo "runtime    {$runtime?->getName()} {$runtime?->getVersion()}, ",
        "fuel {$body->getFuelConsumed()}, wall {$body->getWallTimeUs()} us\n";
}
$ok = $verification->valid && $result->getStdout() === strrev(GREETING);
echo 'receipt    ', $verification->valid ? 'VALID' : 'INVALID', "\n";
if ($verification->valid) {
    echo "           (the executor's key signed these hashes of what it ran and returned;\n";
    echo "           a receipt makes a wrong answer attributable, it does not prove it right)\n";
}

// A tampered copy: one bit of the signed payload flipped.
$payload = $receipt->getPayload();
$payload[10] = chr(ord($payload[10]) ^ 0x01);
$tampered = (new SignedEnvelope())
    ->setPayload($payload)
    ->setSignature($receipt->getSignature())
    ->setSignerPublicKey($receipt->getSignerPublicKey());
$rejected = ReceiptVerifier::verify($tampered, stdout: $result->getStdout());
echo "\ntampered copy (payload byte 10 flipped), checked offline:\n";
show($rejected);
$tamperCaught = !$rejected->valid && $rejected->failures()[0]->name === 'signature';
echo 'tampered   ', $tamperCaught ? 'REJECTED (as it must be)' : 'ACCEPTED: the verifier is broken', "\n";

$ok = $ok && $tamperCaught;
echo "\n", $ok ? 'remote_test: OK' : 'remote_test: FAILED', "\n";
exit($ok ? 0 : 1);
