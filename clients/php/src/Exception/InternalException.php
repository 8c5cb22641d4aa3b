<?php

declare(strict_types=1);

namespace Plasm\Exception;

/** gRPC status INTERNAL. */
class InternalException extends RpcException
{
}
