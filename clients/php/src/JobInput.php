<?php

declare(strict_types=1);

namespace Plasm;

use Plasm\V1\EnvVar;
use Plasm\V1\JobManifest;

/**
 * What a job reads: argv, environment (in order) and stdin. A receipt's
 * input_sha256 is SHA-256 of encode() (docs/receipts.md, "The input hash"):
 *
 *     "plasm/input/v1" 0x00
 *     u32be(number of args)     then per arg: u32be(byte length) bytes
 *     u32be(number of env vars) then per var: u32be(len(name)) name u32be(len(value)) value
 *     u64be(len(stdin)) stdin
 */
final class JobInput
{
    public const DOMAIN = "plasm/input/v1\0";

    /**
     * @param list<string> $args argv, including argv[0] if the guest expects one
     * @param list<array{string, string}> $env [name, value] pairs, in order
     */
    public function __construct(
        public readonly array $args = [],
        public readonly array $env = [],
        public readonly string $stdin = '',
    ) {
        foreach ($args as $arg) {
            if (!is_string($arg)) {
                throw new \InvalidArgumentException('args must be strings');
            }
        }
        foreach ($env as $pair) {
            $ok = is_array($pair) && count($pair) === 2 && is_string($pair[0] ?? null) && is_string($pair[1] ?? null);
            if (!$ok) {
                throw new \InvalidArgumentException('env must be a list of [name, value] string pairs');
            }
        }
    }

    /**
     * @param array<int|string, mixed> $env either [name, value] pairs or a name => value map
     * @param list<string> $args
     */
    public static function of(array $args = [], array $env = [], string $stdin = ''): self
    {
        return new self(array_values($args), self::envPairs($env), $stdin);
    }

    /**
     * From ['args' => [...], 'env' => [...], 'stdin' => '...'] (every key optional;
     * env as pairs or as a map), or from a JobManifest.
     *
     * @param JobManifest|array{args?: list<string>, env?: array<int|string, mixed>, stdin?: string}|self $input
     */
    public static function from(JobManifest|array|self $input): self
    {
        if ($input instanceof self) {
            return $input;
        }
        if ($input instanceof JobManifest) {
            $env = [];
            foreach ($input->getEnv() as $var) {
                $env[] = [$var->getName(), $var->getValue()];
            }
            return new self(iterator_to_array($input->getArgs(), false), $env, $input->getStdin());
        }
        $unknown = array_diff(array_keys($input), ['args', 'env', 'stdin']);
        if ($unknown !== []) {
            throw new \InvalidArgumentException('unknown input keys: ' . implode(', ', $unknown));
        }
        return self::of($input['args'] ?? [], $input['env'] ?? [], $input['stdin'] ?? '');
    }

    /** A JobManifest carrying this input (no module hash, limits or placement). */
    public function toManifest(): JobManifest
    {
        $manifest = new JobManifest();
        $manifest->setArgs($this->args);
        $manifest->setEnv(array_map(
            static fn (array $pair): EnvVar => (new EnvVar())->setName($pair[0])->setValue($pair[1]),
            $this->env,
        ));
        $manifest->setStdin($this->stdin);
        return $manifest;
    }

    /** The canonical encoding the receipt's input_sha256 covers. */
    public function encode(): string
    {
        $out = self::DOMAIN . pack('N', count($this->args));
        foreach ($this->args as $arg) {
            $out .= pack('N', strlen($arg)) . $arg;
        }
        $out .= pack('N', count($this->env));
        foreach ($this->env as [$name, $value]) {
            $out .= pack('N', strlen($name)) . $name . pack('N', strlen($value)) . $value;
        }
        return $out . pack('J', strlen($this->stdin)) . $this->stdin;
    }

    /** 64 lowercase hex. */
    public function sha256(): string
    {
        return hash('sha256', $this->encode());
    }

    /**
     * @param array<int|string, mixed> $env
     * @return list<array{string, string}>
     */
    private static function envPairs(array $env): array
    {
        if (array_is_list($env)) {
            return array_map(static function ($pair): array {
                if (!is_array($pair)) {
                    throw new \InvalidArgumentException('env must be [name, value] pairs or a name => value map');
                }
                return array_values($pair);
            }, $env);
        }
        $pairs = [];
        foreach ($env as $name => $value) {
            $pairs[] = [(string) $name, $value];
        }
        return $pairs;
    }
}
