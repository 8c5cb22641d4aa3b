<?php

/**
 * Plain autoloader for the Plasm PHP client: no Composer needed.
 *
 *     require '/path/to/plasm/clients/php/autoload.php';
 *
 * Registers PSR-4 roots for
 *   - Plasm\                      -> src/ (this client)
 *   - Plasm\V1\, GPBMetadata\Plasm\ -> the message classes generated from proto/
 *   - Google\Protobuf\, GPBMetadata\Google\ -> Debian's php-google-protobuf in
 *     /usr/share/php, as a fallback used only when no other autoloader (for
 *     example Composer's google/protobuf) has provided a class first.
 *
 * The generated classes have one home, the repository's generated/php,
 * written by scripts/generate.py. They are found, in this order, in
 * $PLASM_GENERATED_PHP, in a generated/ directory next to this file (a copy
 * shipped with a packaged release), or in ../../generated/php (a checkout of
 * the repository). Composer lists this file under autoload.files, so a
 * Composer install resolves the generated classes the same way.
 */

declare(strict_types=1);

(static function (): void {
    $candidates = array_filter([
        getenv('PLASM_GENERATED_PHP') ?: null,
        __DIR__ . '/generated',
        dirname(__DIR__, 2) . '/generated/php',
    ]);
    $generated = null;
    foreach ($candidates as $dir) {
        if (is_dir("$dir/Plasm/V1")) {
            $generated = rtrim($dir, '/');
            break;
        }
    }
    if ($generated === null) {
        throw new RuntimeException(
            'Plasm PHP client: the generated message classes were not found (looked in '
            . implode(', ', $candidates) . '); set PLASM_GENERATED_PHP to the generated/php directory'
        );
    }

    // Longest prefix first: Plasm\V1\ must win over Plasm\.
    $roots = [
        'Plasm\\V1\\' => "$generated/Plasm/V1/",
        'GPBMetadata\\Plasm\\' => "$generated/GPBMetadata/Plasm/",
        'Plasm\\' => __DIR__ . '/src/',
        'Google\\Protobuf\\' => '/usr/share/php/Google/Protobuf/',
        'GPBMetadata\\Google\\' => '/usr/share/php/GPBMetadata/Google/',
    ];
    spl_autoload_register(static function (string $class) use ($roots): void {
        foreach ($roots as $prefix => $dir) {
            if (strncmp($class, $prefix, strlen($prefix)) === 0) {
                $file = $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
                if (is_file($file)) {
                    require $file;
                }
                return;
            }
        }
    });
})();
