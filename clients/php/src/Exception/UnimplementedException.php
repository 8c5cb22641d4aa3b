<?php

declare(strict_types=1);

namespace Plasm\Exception;

/**
 * UNIMPLEMENTED: the server does not know the method (an older node, or not a
 * Plasm node at all).
 */
class UnimplementedException extends RpcException
{
}
