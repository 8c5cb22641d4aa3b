<?php
// Smoke test for the generated PHP message classes (run by scripts/generate.py).
//
//   php scripts/php-smoke.php [GENERATED_PHP_DIR]   (default: generated/php)
//
// Loads the classes with a plain PSR-4-style autoloader over the generated
// directory and Debian's php-google-protobuf runtime in /usr/share/php, then
// builds a plasm.v1.ReceiptBody, serializes it, parses it back and compares.
// Prints "php-smoke: ok" and exits 0, or prints the failure and exits 1.

declare(strict_types=1);

$roots = [
    rtrim($argv[1] ?? dirname(__DIR__) . '/generated/php', '/'),
    '/usr/share/php',
];
spl_autoload_register(static function (string $class) use ($roots): void {
    $relative = str_replace('\\', '/', $class) . '.php';
    foreach ($roots as $root) {
        if (is_file("$root/$relative")) {
            require_once "$root/$relative";
            return;
        }
    }
});

use Google\Protobuf\Timestamp;
use Plasm\V1\Outcome;
use Plasm\V1\ReceiptBody;
use Plasm\V1\ResourceLimits;
use Plasm\V1\RuntimeInfo;

function check(bool $ok, string $what): void
{
    if (!$ok) {
        fwrite(STDERR, "php-smoke: FAILED: $what\n");
        exit(1);
    }
}

try {
    $started = new Timestamp();
    $started->setSeconds(1700000000);
    $started->setNanos(123000000);

    $body = new ReceiptBody();
    $body->setVersion(1);
    $body->setJobId(str_repeat('ab', 16));
    $body->setModuleSha256(str_repeat('0', 64));
    $body->setStdoutBytes(4294967296);
    $body->setOutcome(Outcome::OUTCOME_NONZERO_EXIT);
    $body->setExitCode(-3);
    $body->setLimits((new ResourceLimits())->setMaxFuel(1000000)->setTimeoutMs(5000));
    $body->setRuntime((new RuntimeInfo())->setName('wasmtime')->setConfig(['a=1', 'b=2']));
    $body->setStartedAt($started);
    $body->setDetail("caf\u{e9}");

    $bytes = $body->serializeToString();
    check(strlen($bytes) > 0, 'serialized ReceiptBody is empty');

    $parsed = new ReceiptBody();
    $parsed->mergeFromString($bytes);
    check($parsed->getVersion() === 1, 'version');
    check($parsed->getJobId() === str_repeat('ab', 16), 'job_id');
    check($parsed->getStdoutBytes() === 4294967296, 'stdout_bytes (uint64)');
    check($parsed->getOutcome() === Outcome::OUTCOME_NONZERO_EXIT, 'outcome');
    check(Outcome::name($parsed->getOutcome()) === 'OUTCOME_NONZERO_EXIT', 'Outcome::name');
    check($parsed->getExitCode() === -3, 'exit_code (negative int32)');
    check($parsed->getLimits()->getMaxFuel() === 1000000, 'limits.max_fuel');
    check($parsed->getLimits()->getTimeoutMs() === 5000, 'limits.timeout_ms');
    check(iterator_to_array($parsed->getRuntime()->getConfig()) === ['a=1', 'b=2'], 'runtime.config');
    check($parsed->getStartedAt()->getSeconds() === 1700000000, 'started_at.seconds');
    check($parsed->getStartedAt()->getNanos() === 123000000, 'started_at.nanos');
    check($parsed->getDetail() === "caf\u{e9}", 'detail (UTF-8)');
    check($parsed->serializeToString() === $bytes, 're-serialization is not identical');
} catch (Throwable $e) {
    fwrite(STDERR, 'php-smoke: FAILED: ' . get_class($e) . ': ' . $e->getMessage() . "\n");
    exit(1);
}

echo 'php-smoke: ok (ReceiptBody round trip, ' . strlen($bytes) . " bytes)\n";
