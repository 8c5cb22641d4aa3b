<?php

declare(strict_types=1);

namespace Plasm\Tests\Offline;

use PHPUnit\Framework\TestCase;
use Plasm\JobInput;

/** The input encoding and the ways to pass env (docs/receipts.md, "The input hash"). */
final class JobInputTest extends TestCase
{
    public function testTheDocumentedExample(): void
    {
        $input = JobInput::of(['a'], [['K', 'V']], 'x');
        self::assertSame(
            '706c61736d2f696e7075742f763100' . '00000001' . '00000001' . '61'
            . '00000001' . '00000001' . '4b' . '00000001' . '56' . '0000000000000001' . '78',
            bin2hex($input->encode()),
        );
    }

    public function testEnvAsAMapKeepsItsOrder(): void
    {
        self::assertSame(
            JobInput::of([], [['B', '1'], ['A', '2']])->sha256(),
            JobInput::of([], ['B' => '1', 'A' => '2'])->sha256(),
        );
        self::assertNotSame(
            JobInput::of([], ['B' => '1', 'A' => '2'])->sha256(),
            JobInput::of([], ['A' => '2', 'B' => '1'])->sha256(),
        );
    }

    public function testManifestRoundTrip(): void
    {
        $input = JobInput::from(['args' => ['prog', 'é'], 'env' => ['LANG' => 'C'], 'stdin' => "\0in"]);
        $again = JobInput::from($input->toManifest());
        self::assertSame($input->encode(), $again->encode());
        self::assertSame(['prog', 'é'], $again->args);
        self::assertSame([['LANG', 'C']], $again->env);
    }

    public function testMisshapenInputIsRefused(): void
    {
        foreach ([['argv' => []], ['env' => ['A=B']], ['args' => [1]]] as $bad) {
            try {
                JobInput::from($bad);
                self::fail('accepted ' . json_encode($bad));
            } catch (\InvalidArgumentException|\TypeError) {
                self::addToAssertionCount(1);
            }
        }
    }
}
